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
    /// Scratch files: trash_min_age=DURATION, trash_skip=PATTERN:PATTERN...
    pub trash_min_age: Option<u64>,
    pub trash_skip: Option<crate::store::layout::ScratchNames>,
    /// index=off: keep no metadata index (find/du/changes are then unavailable).
    pub no_index: bool,
    /// index_queue=N, index_delay=MS.
    pub index: crate::index::IndexOpts,
    /// readahead=KIB: the kernel's readahead window for this mount (None: the default,
    /// READAHEAD_KIB; 0 keeps the kernel's own, 128 KiB).
    pub readahead_kib: Option<u32>,
    /// nonempty: mount over a directory that has files in it (hiding them meanwhile).
    pub nonempty: bool,
    /// snapshot=NAME: serve snapshot NAME, read-only.
    pub snapshot: Option<String>,
    /// snapshot_every=DURATION, snapshots_keep=N: scheduled snapshots.
    pub snapshot_every: Option<u64>,
    pub snapshots_keep: Option<u32>,
    /// cache_size=SIZE: the bound of a remote store's local blob cache.
    pub cache_size: Option<u64>,
    /// publish_interval=DURATION: how often a remote store's writer publishes (0: only
    /// on `decofs publish`).
    pub publish_interval: Option<u64>,
    /// lease_ttl=DURATION: the TTL of a remote store's write lease.
    pub lease_ttl: Option<u64>,
    /// follow_interval=DURATION: how often a read-only mount of a remote store reads
    /// the published head (0: it does not follow).
    pub follow_interval: Option<u64>,
    /// remote_sync=fsync: fsync(2) returns once the change is published.
    pub remote_sync_fsync: bool,
    /// reader_token: one request thread at a time reads and serves in a row, handing
    /// over before it blocks (docs/DESIGN.md, "Request threads").
    pub reader_token: bool,
}

/// Every option `-o` accepts, as `decofs mount --help` lists them (a unit test checks
/// that each one parses).
pub const HELP: &str = "Comma-separated mount options (each value is checked; an unknown \
option or a bad value is refused with invalid_option and nothing is mounted):
  ro, rw                       read-only (beside the one read-write mount) or read-write
  allow_other, allow_root      let other users (or root) use the mount
  nonempty                     mount over a directory that is not empty (its files are
                               hidden while mounted; refused with mountpoint_not_empty
                               otherwise)
  dev, nodev, suid, nosuid, exec, noexec, atime, noatime, sync, async, dirsync
                               passed to the kernel (devices and set-ID bits are off
                               unless dev/suid)
  log=LEVEL                    the daemon's log level: off, error, warn, info, debug,
                               trace, or TARGET=LEVEL (RUST_LOG wins if set)
  trash_retention=DURATION     how long deleted files stay restorable (0: no trash)
  revisions_keep=N             earlier versions kept per file
  revisions_max_age=DURATION   how long earlier versions are kept
  trash_min_age=DURATION       a file deleted younger than this skips the trash
                               (default 5s; 0 keeps every deleted file)
  trash_skip=PATTERNS          names that skip the trash, ':'-separated globs (* and ?);
                               empty for none (default: *-journal, *-wal, *-shm, .*.swp,
                               *~, *.tmp, *.part, ... see decofs init --help)
  index=on, index=off, noindex
                               keep (default) or keep no metadata index
  index_queue=N                the index's change queue capacity (N > 0, default 65536)
  index_delay=MS               pause the index worker after each batch (testing)
  snapshot=NAME                serve snapshot NAME (read-only; implies ro)
  snapshot_every=DURATION      take a snapshot auto-<UTC time> this often (read-write)
  snapshots_keep=N             keep the newest N scheduled snapshots (default 24)
  cache_size=SIZE              a store on an object store: the bound of its local
                               blob cache (bytes, or K, M, G, T; default half the
                               disk; 0: no bound); only uploaded blobs are evicted
  publish_interval=DURATION    a store on an object store: publish its state this often
                               when it changed (default 5s; 0: only `decofs publish`)
  lease_ttl=DURATION           a store on an object store: the TTL of the write lease
                               (default 30s); another host may take over that long
                               after the last renewal
  follow_interval=DURATION     with ro, a store on an object store: follow what its
                               writer publishes, reading the head this often
                               (default 2s; 0: do not follow)
  remote_sync=fsync, remote_sync=local
                               a store on an object store: fsync(2) returns once the
                               change is published (fsync), or once it is on the local
                               disk (local, the default)
  reader_token                 one request thread at a time reads requests and serves
                               them in a row, handing over before it blocks: faster
                               for one client at a time (sqlite), slower for cp -a
                               (see docs/BENCHMARKS.md); off by default
  readahead=KIB                the kernel's readahead window (0..=1048576, default 4096;
                               0 keeps the kernel's 128 KiB)
  defaults, auto, noauto, user, nouser, users, _netdev, nofail, default_permissions
                               accepted and ignored (fstab)
DURATION: seconds, or a number with s, m, h, d or w (e.g. 1d).";

/// The levels `log=` takes (as RUST_LOG).
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Is `v` a log filter `log=` accepts: LEVEL or TARGET=LEVEL (a Rust module path)?
pub fn valid_log_filter(v: &str) -> bool {
    let (target, level) = match v.split_once('=') {
        Some((t, l)) => (Some(t), l),
        None => (None, v),
    };
    let target_ok = target.is_none_or(|t| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    });
    target_ok && LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str())
}

/// Default readahead window. The kernel caps a FUSE mount's readahead at 128 KiB, so a
/// sequential reader waits on one 128 KiB request at a time; a wider window lets it send
/// requests of max_pages (1 MiB) several at once. Raised through the mount's bdi in sysfs.
pub const READAHEAD_KIB: u32 = 4096;

/// Parse `-o a,b,c`. Options for fstab/mount(8) that do not concern the daemon are
/// accepted and ignored.
pub fn parse_opts(s: &str) -> Result<MountOpts> {
    let mut o = MountOpts::default();
    let mut rw = false;
    for opt in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        match opt {
            "ro" => o.read_only = true,
            "rw" => {
                o.read_only = false;
                rw = true;
            }
            x if x.starts_with("snapshot=") => {
                let name = &x["snapshot=".len()..];
                crate::store::snapshot::validate_name(name)
                    .map_err(|_| Error::BadOption(opt.to_string()))?;
                o.snapshot = Some(name.to_string());
            }
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
            "nonempty" => o.nonempty = true,
            "reader_token" => o.reader_token = true,
            // Applied by main before logging starts (only when valid).
            x if x.starts_with("log=") => {
                if !valid_log_filter(&x["log=".len()..]) {
                    return Err(Error::BadOption(opt.to_string()));
                }
            }
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
            x if x.starts_with("trash_min_age=") => {
                o.trash_min_age = Some(duration_opt(opt)?);
            }
            x if x.starts_with("trash_skip=") => {
                o.trash_skip = Some(
                    crate::store::layout::ScratchNames::parse(&x["trash_skip=".len()..])
                        .map_err(|_| Error::BadOption(opt.to_string()))?,
                );
            }
            x if x.starts_with("snapshot_every=") => {
                let d = duration_opt(opt)?;
                if d == 0 {
                    return Err(Error::BadOption(opt.to_string()));
                }
                o.snapshot_every = Some(d);
            }
            x if x.starts_with("lease_ttl=") => {
                let d = duration_opt(opt)?;
                if d == 0 {
                    return Err(Error::BadOption(opt.to_string()));
                }
                o.lease_ttl = Some(d);
            }
            x if x.starts_with("follow_interval=") => {
                o.follow_interval = Some(duration_opt(opt)?);
            }
            "remote_sync=fsync" => o.remote_sync_fsync = true,
            "remote_sync=local" => o.remote_sync_fsync = false,
            x if x.starts_with("publish_interval=") => {
                o.publish_interval = Some(duration_opt(opt)?);
            }
            x if x.starts_with("cache_size=") => {
                o.cache_size = Some(
                    parse_bytes(&x["cache_size=".len()..])
                        .ok_or_else(|| Error::BadOption(opt.to_string()))?,
                );
            }
            x if x.starts_with("snapshots_keep=") => {
                o.snapshots_keep = Some(
                    opt["snapshots_keep=".len()..]
                        .parse()
                        .map_err(|_| Error::BadOption(opt.to_string()))?,
                );
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
    if o.snapshot_every.is_some() && o.read_only {
        return Err(Error::BadOption(
            "snapshot_every=…: scheduled snapshots need a read-write mount".into(),
        ));
    }
    if o.snapshot.is_some() {
        if o.snapshot_every.is_some() {
            return Err(Error::BadOption("snapshot=…,snapshot_every=…".into()));
        }
        if rw {
            return Err(Error::BadOption(
                "rw,snapshot=…: a snapshot is read-only".into(),
            ));
        }
        o.read_only = true;
    }
    Ok(o)
}

/// A size: bytes, or a number with K, M, G or T (powers of 1024).
pub fn parse_bytes(v: &str) -> Option<u64> {
    let (num, shift) = match v.chars().last()? {
        'K' | 'k' => (&v[..v.len() - 1], 10),
        'M' | 'm' => (&v[..v.len() - 1], 20),
        'G' | 'g' => (&v[..v.len() - 1], 30),
        'T' | 't' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// The duration after the '=' of a `key=DURATION` option.
fn duration_opt(opt: &str) -> Result<u64> {
    opt.split_once('=')
        .and_then(|(_, v)| crate::store::layout::parse_duration(v))
        .ok_or_else(|| Error::BadOption(opt.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option the help lists parses (with a sample value), so the help and the
    /// parser cannot drift apart silently.
    #[test]
    fn every_option_in_the_help_parses() {
        let mut names = Vec::new();
        for line in HELP.lines().skip(1) {
            let Some(l) = line.strip_prefix("  ") else {
                continue;
            };
            if l.starts_with(' ') {
                continue;
            }
            let head = l.split("  ").next().unwrap_or("");
            for n in head.split(", ") {
                names.push(n.trim().to_string());
            }
        }
        assert!(names.len() > 30, "{names:?}");
        for n in &names {
            let opt = match n.split_once('=') {
                Some((k, "LEVEL")) => format!("{k}=debug"),
                Some((k, "DURATION")) => format!("{k}=2h"),
                Some((k, "N" | "MS" | "KIB")) => format!("{k}=7"),
                Some((k, "PATTERNS")) => format!("{k}=*.bak:#*"),
                Some((k, "NAME")) => format!("{k}=daily-1"),
                Some((k, "SIZE")) => format!("{k}=5G"),
                _ => n.clone(),
            };
            assert!(parse_opts(&opt).is_ok(), "{opt} (from the help) must parse");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "log=banana",
            "log=",
            "log=decofs=loud",
            "index=maybe",
            "index_queue=0",
            "index_queue=x",
            "index_delay=-1",
            "readahead=2000000",
            "readahead=fast",
            "trash_retention=soon",
            "trash_min_age=young",
            "trash_skip=a/b",
            "revisions_keep=-3",
            "revisions_max_age=",
            "nonempty=yes",
            "snapshot=.hidden",
            "snapshot_every=0",
            "snapshot_every=often",
            "snapshots_keep=-1",
            "cache_size=",
            "publish_interval=soon",
            "lease_ttl=0",
            "follow_interval=x",
            "remote_sync=always",
            "cache_size=lots",
            "cache_size=99999999999T",
            "ro,snapshot_every=1h",
            "snapshot=a/b",
            "rw,snapshot=daily",
            "frobnicate",
        ] {
            assert!(parse_opts(bad).is_err(), "{bad} must be refused");
        }
        assert!(parse_opts("log=decofs=debug,nonempty,ro").is_ok());
        assert!(parse_opts("nonempty").unwrap().nonempty);
        assert!(parse_opts("reader_token").unwrap().reader_token);
        assert!(!parse_opts("allow_other").unwrap().reader_token);
        assert_eq!(
            parse_opts("cache_size=3M").unwrap().cache_size,
            Some(3 << 20)
        );
    }
}
