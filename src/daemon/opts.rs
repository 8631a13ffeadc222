//! `-o` mount options: parsing them into [`MountOpts`].

use std::time::Duration;

use fuser::MountOption;

use crate::store::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct MountOpts {
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    /// Kernel flags passed through (nosuid, noexec, ...).
    pub flags: Vec<MountOption>,
    /// Retention overrides: trash_retention=DURATION, revisions_keep=N,
    /// revisions_max_age=DURATION.
    pub trash_retention: Option<u64>,
    pub revisions_keep: Option<u32>,
    pub revisions_max_age: Option<u64>,
    /// index=off: keep no metadata index (find/du/changes are then unavailable).
    pub no_index: bool,
    /// index_queue=N, index_delay=MS.
    pub index: crate::index::IndexOpts,
    /// readahead=KIB: the kernel's readahead window for this mount (None: the default,
    /// READAHEAD_KIB; 0 keeps the kernel's own, 128 KiB).
    pub readahead_kib: Option<u32>,
}

/// Default readahead window. The kernel caps a FUSE mount's readahead at 128 KiB, so a
/// sequential reader waits on one 128 KiB request at a time; a wider window lets it send
/// requests of max_pages (1 MiB) several at once. Raised through the mount's bdi in sysfs.
pub const READAHEAD_KIB: u32 = 4096;

/// Parse `-o a,b,c`. Options for fstab/mount(8) that do not concern the daemon are
/// accepted and ignored.
pub fn parse_opts(s: &str) -> Result<MountOpts> {
    let mut o = MountOpts::default();
    for opt in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        match opt {
            "ro" => o.read_only = true,
            "rw" => o.read_only = false,
            "allow_other" => o.allow_other = true,
            "allow_root" => o.allow_root = true,
            "default_permissions"
            | "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "_netdev"
            | "nofail" => {}
            "dev" => o.flags.push(MountOption::Dev),
            "nodev" => o.flags.push(MountOption::NoDev),
            "suid" => o.flags.push(MountOption::Suid),
            "nosuid" => o.flags.push(MountOption::NoSuid),
            "exec" => o.flags.push(MountOption::Exec),
            "noexec" => o.flags.push(MountOption::NoExec),
            "atime" => o.flags.push(MountOption::Atime),
            "noatime" => o.flags.push(MountOption::NoAtime),
            "sync" => o.flags.push(MountOption::Sync),
            "async" => o.flags.push(MountOption::Async),
            "dirsync" => o.flags.push(MountOption::DirSync),
            x if x.starts_with("log=") => {} // applied by main before logging starts
            "index=off" | "noindex" => o.no_index = true,
            "index=on" => o.no_index = false,
            x if x.starts_with("index_queue=") => {
                o.index.queue = x["index_queue=".len()..]
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::BadOption(opt.to_string()))?;
            }
            x if x.starts_with("index_delay=") => {
                o.index.delay = Duration::from_millis(
                    x["index_delay=".len()..]
                        .parse()
                        .map_err(|_| Error::BadOption(opt.to_string()))?,
                );
            }
            x if x.starts_with("readahead=") => {
                o.readahead_kib = Some(
                    x["readahead=".len()..]
                        .parse()
                        .ok()
                        .filter(|n| *n <= 1 << 20)
                        .ok_or_else(|| Error::BadOption(opt.to_string()))?,
                );
            }
            x if x.starts_with("trash_retention=") => {
                o.trash_retention = Some(duration_opt(opt)?);
            }
            x if x.starts_with("revisions_max_age=") => {
                o.revisions_max_age = Some(duration_opt(opt)?);
            }
            x if x.starts_with("revisions_keep=") => {
                o.revisions_keep = Some(
                    opt["revisions_keep=".len()..]
                        .parse()
                        .map_err(|_| Error::BadOption(opt.to_string()))?,
                );
            }
            other => return Err(Error::BadOption(other.to_string())),
        }
    }
    Ok(o)
}

/// The duration after the '=' of a `key=DURATION` option.
fn duration_opt(opt: &str) -> Result<u64> {
    opt.split_once('=')
        .and_then(|(_, v)| crate::store::layout::parse_duration(v))
        .ok_or_else(|| Error::BadOption(opt.to_string()))
}
