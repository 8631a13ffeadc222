//! Long-term storage on an S3-compatible object store (docs/DESIGN.md, "Remote
//! storage"): which bucket and prefix a store is bound to (`Binding`, the store's
//! `remote` file), the names of what decofs keeps there, and the client
//! ([`client::Remote`]). The blob side of it is `store/blobs/remote.rs`.

pub mod client;
pub mod follow;
pub mod gc;
pub mod lease;
pub mod publish;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::blobs::{LocalBlobs, RemoteBlobs};
use super::error::{Error, IoContext, Result};
use super::layout::{sync_dir, Layout};
use super::node::{hash_hex, Hash};
use super::OpenOptions;

pub use client::{Put, Remote};

/// First line of a store's `remote` file.
const BINDING_MAGIC: &str = "decofs-remote 1";

/// First line of the bucket's `store` object.
const MARKER_MAGIC: &str = "decofs-remote-store 1";

/// `s3://BUCKET/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty (the whole bucket).
    pub prefix: String,
}

impl RemoteUrl {
    pub fn parse(s: &str) -> Result<RemoteUrl> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "'{s}' is not an object store URL ({why}); write s3://BUCKET/PREFIX"
            ))
        };
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !ok_bucket {
            return Err(bad(
                "a bucket name is 3-63 lowercase letters, digits, '-' and '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..")
            || prefix.contains("//")
            || prefix.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\')
        {
            return Err(bad(
                "the prefix has an empty, '.' or '..' part or a control character",
            ));
        }
        Ok(RemoteUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A store's binding to an object store: its `remote` file. Credentials are never
/// written here; they come from the environment (`AWS_ACCESS_KEY_ID`, ...) of the
/// process that opens the store. A field left `None` comes from the environment too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub url: RemoteUrl,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
}

impl Binding {
    fn path(layout: &Layout) -> std::path::PathBuf {
        layout.root.join("remote").join("binding")
    }

    /// The store's binding, if it has one.
    pub fn read(layout: &Layout) -> Result<Option<Binding>> {
        let p = Binding::path(layout);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
        };
        let corrupt = |why: &str| Error::CorruptRecord {
            node: p.display().to_string(),
            detail: why.to_string(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(BINDING_MAGIC) {
            return Err(corrupt("not a decofs remote binding"));
        }
        let (mut url, mut endpoint, mut region, mut allow_http) = (None, None, None, None);
        for line in lines {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "url" => url = Some(RemoteUrl::parse(v)?),
                "endpoint" => endpoint = Some(v.to_string()),
                "region" => region = Some(v.to_string()),
                "allow_http" => allow_http = Some(v == "true"),
                _ => {} // a later version's field: ignored
            }
        }
        Ok(Some(Binding {
            url: url.ok_or_else(|| corrupt("no url"))?,
            endpoint,
            region,
            allow_http,
        }))
    }

    /// Write the binding durably (a temporary file renamed into place).
    pub fn write(&self, layout: &Layout) -> Result<()> {
        let mut text = format!("{BINDING_MAGIC}\nurl {}\n", self.url);
        if let Some(e) = &self.endpoint {
            text += &format!("endpoint {e}\n");
        }
        if let Some(r) = &self.region {
            text += &format!("region {r}\n");
        }
        if let Some(h) = self.allow_http {
            text += &format!("allow_http {h}\n");
        }
        let dir = layout.root.join("remote");
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let tmp = layout.sessions().join("remote.tmp");
        let mut f = fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .ctx(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, Binding::path(layout)).ctx(|| "install the remote binding".into())?;
        sync_dir(&dir)?;
        sync_dir(&layout.root)
    }
}

/// Where a blob lives in the bucket, under the prefix: `blobs/ab/<hash>`, as on disk.
pub fn blob_key(hash: &Hash) -> String {
    let h = hash_hex(hash);
    format!("blobs/{}/{}", &h[..2], h)
}

/// The key of the object that names the store a prefix belongs to.
pub const STORE_KEY: &str = "store";

/// Claim the prefix for `store_id` (create-only), or check that it is already ours.
/// Another store's prefix is `remote_conflict`: two stores in one prefix would share
/// a lease and published state.
pub fn claim_prefix(remote: &Remote, store_id: &str, chunk_size: u32) -> Result<()> {
    let text = format!("{MARKER_MAGIC}\nstore {store_id}\nchunk_size {chunk_size}\n");
    match remote.put_create(STORE_KEY, text.into_bytes())? {
        Put::Created => Ok(()),
        Put::Exists => {
            let got = remote.get(STORE_KEY)?.map(|g| g.data).unwrap_or_default();
            let got = String::from_utf8_lossy(&got);
            let owner = got
                .lines()
                .find_map(|l| l.strip_prefix("store "))
                .unwrap_or("an unknown store");
            if owner == store_id {
                Ok(())
            } else {
                Err(Error::RemoteConflict(format!(
                    "{} holds store {owner}, not {store_id}",
                    remote.url()
                )))
            }
        }
    }
}

/// Write `value` as JSON to `path` (under `STORE/remote/`) whole: a temporary file in
/// `sessions/`, synced, renamed over it, the directory synced.
pub(super) fn write_json_file(
    layout: &Layout,
    path: &std::path::Path,
    value: &impl serde::Serialize,
) -> Result<()> {
    let name = path
        .file_name()
        .expect("a file under remote/")
        .to_string_lossy();
    let tmp = layout.sessions().join(format!("{name}.tmp"));
    let mut f = fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(value).expect("plain data serializes"))
        .and_then(|()| f.sync_all())
        .ctx(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("install {}", path.display()))?;
    sync_dir(path.parent().expect("remote/ has a parent"))
}

/// Wall-clock unix milliseconds (lease expiries, gc marks).
pub(super) fn now_ms() -> i64 {
    (super::node::Time::now().unix_nanos() / 1_000_000) as i64
}

/// The upload ledger of a writer (sled): which blobs wait, which are uploaded.
pub fn ledger_dir(layout: &Layout) -> PathBuf {
    layout.root.join("remote").join("ledger")
}

/// The default bound of the local blob cache: half the disk under the store.
fn default_cache_size(layout: &Layout) -> u64 {
    layout
        .statfs()
        .map(|st| st.f_blocks * st.f_frsize / 2)
        .unwrap_or(0)
}

/// How long a passed conditional-write check stands for the same endpoint: it takes
/// seconds on some object stores, and a mount should not.
const CHECK_STANDS_SECS: i64 = 24 * 3600;

fn checked_path(layout: &Layout) -> PathBuf {
    layout.root.join("remote").join("checked")
}

/// What a passed check is recorded as: the object store it was made against.
fn checked_line(remote: &Remote) -> String {
    format!("{} {}", remote.url(), remote.endpoint())
}

/// Did this endpoint pass the conditional-write check within the last day?
fn checked_recently(layout: &Layout, remote: &Remote) -> bool {
    let p = checked_path(layout);
    let fresh = fs::metadata(&p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| (age.as_secs() as i64) < CHECK_STANDS_SECS);
    fresh && fs::read_to_string(&p).is_ok_and(|s| s.trim() == checked_line(remote))
}

fn note_checked(layout: &Layout, remote: &Remote) {
    // Only a shortcut: if it cannot be written, the next open checks again.
    let _ = fs::write(checked_path(layout), checked_line(remote));
}

/// The blobs of a store bound to an object store (None for one that is not). A
/// writer's open checks that the object store enforces conditional writes
/// (`remote_unsafe` if not); one it cannot reach is only logged: the store works
/// locally and uploads once the object store answers.
pub(crate) fn open_blobs(
    layout: &Layout,
    local: &Arc<LocalBlobs>,
    opts: &OpenOptions,
) -> Result<Option<Arc<RemoteBlobs>>> {
    let Some(b) = Binding::read(layout)? else {
        return Ok(None);
    };
    let remote = Arc::new(Remote::connect(&b)?);
    // Only a writer that may take the lease writes to the bucket.
    let mut unreachable = None;
    if !opts.read_only && !opts.no_lease && !opts.follower && !checked_recently(layout, &remote) {
        match remote.check_conditional_writes() {
            Ok(()) => note_checked(layout, &remote),
            Err(e @ Error::RemoteUnsafe(_)) => return Err(e),
            Err(e) => {
                log::warn!(
                    "the object store {} cannot be reached now ({e}); blobs stay local and are uploaded once it answers",
                    b.url
                );
                unreachable = Some(e);
            }
        }
    }
    let limit = opts
        .cache_size
        .unwrap_or_else(|| default_cache_size(layout));
    let ledger = (!opts.read_only).then(|| ledger_dir(layout));
    let blobs = RemoteBlobs::open(local.clone(), remote, ledger.as_deref(), limit)?;
    // Status says so, and the open does not wait for it again to take the lease.
    if let Some(e) = unreachable {
        blobs.note_error(&e);
    }
    Ok(Some(blobs))
}

/// Bind a store (not mounted) to an object store: check that it enforces conditional
/// writes, claim the prefix, write the binding, and queue every blob already here for
/// upload. Returns how many were queued; a mount uploads them.
pub fn bind(store_path: &std::path::Path, binding: &Binding) -> Result<u64> {
    let layout = Layout::new(store_path);
    let format = layout.read_format()?;
    if let Some(old) = Binding::read(&layout)? {
        if old.url != binding.url {
            return Err(Error::InvalidArgument(format!(
                "{} is bound to {} already",
                store_path.display(),
                old.url
            )));
        }
    }
    let remote = Remote::connect(binding)?;
    remote.check_conditional_writes()?;
    let open = || {
        super::Store::open(
            store_path,
            OpenOptions {
                cache_bytes: 1 << 20,
                ..Default::default()
            },
        )
    };
    // The lock first: a mounted store is changed only through its daemon.
    let store = open()?;
    claim_prefix(&remote, &format.store_id.to_string(), format.chunk_size)?;
    binding.write(&layout)?;
    note_checked(&layout, &remote);
    drop(store);
    // Opened again, bound: the blobs already here go into the ledger.
    let store = open()?;
    let queued = match store.remote() {
        Some(r) => {
            let n = r.queue_unknown()?;
            r.flush()?;
            n
        }
        None => 0,
    };
    Ok(queued)
}
