//! Where a path given on the command line lives: which store, mounted where, and the
//! path inside the filesystem.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::host::mounts;
use crate::store::layout::{Layout, FORMAT_FILE};
use crate::store::{Error, Result};

/// Resolve a CLI argument that is a mountpoint or a store to the store path (and the
/// mountpoint if it is one).
pub fn resolve(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let canon = fs::canonicalize(path).map_err(|_| Error::StoreNotFound(path.to_path_buf()))?;
    if let Some(m) = mounts().into_iter().rev().find(|m| m.mountpoint == canon) {
        if m.fstype == "fuse.decofs" {
            return Ok((PathBuf::from(m.source), Some(canon)));
        }
    }
    Layout::new(&canon).read_format()?;
    Ok((canon, None))
}

/// Where a path given on the command line lives: (store, mountpoint if mounted, path
/// relative to the filesystem root). Works for paths that no longer exist (deleted
/// files) and for paths inside an unmounted store (`STORE/dir/file`).
pub fn locate(p: &Path) -> Result<(PathBuf, Option<PathBuf>, PathBuf)> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("cwd", e))?
            .join(p)
    };
    let mut norm = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                norm.pop();
            }
            Component::CurDir => {}
            other => norm.push(other),
        }
    }
    let mounts = mounts();
    let best = mounts
        .iter()
        .filter(|m| m.fstype == "fuse.decofs" && norm.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.as_os_str().len());
    if let Some(m) = best {
        let rel = norm
            .strip_prefix(&m.mountpoint)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        return Ok((PathBuf::from(&m.source), Some(m.mountpoint.clone()), rel));
    }
    for anc in norm.ancestors() {
        if anc.join(FORMAT_FILE).exists() {
            let rel = norm
                .strip_prefix(anc)
                .unwrap_or(Path::new(""))
                .to_path_buf();
            return Ok((anc.to_path_buf(), None, rel));
        }
    }
    Err(Error::StoreNotFound(p.to_path_buf()))
}

/// What a person should do about `e`: the store's suggestion, except where it depends
/// on the path given. A path that does not exist or holds something else is a mistake
/// to correct, not a place to `decofs init`; only an empty directory is.
pub fn suggestion(e: &Error) -> String {
    const GIVE: &str = "give a decofs mountpoint, a store, or a path inside one \
                        (`findmnt -t fuse.decofs` lists the mounts)";
    match e {
        Error::StoreNotFound(p) if fs::symlink_metadata(p).is_err() => {
            format!("check the path: {} does not exist; {GIVE}", p.display())
        }
        Error::StoreNotFound(_) => GIVE.into(),
        Error::NotAStore(p) if is_empty_dir(p) => format!(
            "{GIVE}; to make a new store in this empty directory, run `decofs init {}`",
            p.display()
        ),
        Error::NotAStore(_) => GIVE.into(),
        Error::NotFound => "check the path; what was deleted is listed by \
                            `decofs trash ls MOUNTPOINT`"
            .into(),
        Error::IsDir => "give a file: revisions are kept per file (a deleted directory \
                         comes back whole with `decofs trash restore`)"
            .into(),
        _ => e.suggestion(),
    }
}

fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}
