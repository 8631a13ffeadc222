//! The control protocol between the CLI and a running daemon: one JSON line per
//! request, one per reply, over `STORE/sessions/control.<pid>.sock`.
//!
//! A request is a [`Request`] (tagged by `"cmd"`); each request type names its reply
//! type through [`Ask`]. A reply is that type, or a [`Report`]: the one error shape of
//! decofs, which the daemon sends, the CLI prints (text or `--json`) and the background
//! `decofs mount` relays from the daemon it starts. The wire is the one earlier builds
//! spoke (an error reply is recognised by its `"code"`), so a CLI and a daemon across
//! an upgrade still understand each other.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jsonpath::WirePath;
use crate::store::check::GcReport;
use crate::store::Error;

pub use super::stats::{Stats, StatsReply};

/// The one error report: what could not be done, a stable code, why, and what to do.
/// As JSON: `{"error": WHAT, "code", "reason", "suggestion"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// What could not be done ("cannot list the trash"). In a daemon's reply, which does
    /// not know what the user asked for, it repeats the reason (as earlier builds did).
    #[serde(rename = "error")]
    pub what: String,
    pub code: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub suggestion: String,
}

impl Report {
    /// The report of an error of the library.
    pub fn of(what: impl Into<String>, e: &Error) -> Report {
        Report {
            what: what.into(),
            code: e.code().into(),
            reason: e.to_string(),
            suggestion: super::locate::suggestion(e),
        }
    }

    /// The report a daemon sends for an error: its `what` is the reason.
    pub fn reply(e: &Error) -> Report {
        Report::of(e.to_string(), e)
    }

    /// An argument that cannot be used (code `invalid_argument`).
    pub fn invalid(
        what: impl Into<String>,
        reason: impl Into<String>,
        suggestion: impl Into<String>,
    ) -> Report {
        Report {
            what: what.into(),
            code: "invalid_argument".into(),
            reason: reason.into(),
            suggestion: suggestion.into(),
        }
    }

    /// A request the daemon cannot read: not JSON, an unknown `cmd`, a missing field.
    pub fn bad_request(e: &serde_json::Error) -> Report {
        let reason = format!("bad request: {e}");
        Report {
            what: reason.clone(),
            code: "invalid_argument".into(),
            reason,
            suggestion: "the daemon and this decofs may be different builds; unmount and mount \
                         again with this build"
                .into(),
        }
    }

    /// A request whose handler panicked (the daemon goes on).
    pub fn internal(reason: impl Into<String>) -> Report {
        let reason = reason.into();
        Report {
            what: reason.clone(),
            code: "internal_error".into(),
            reason,
            suggestion: "this is a bug in decofs: see the daemon log, STORE/decofs.log".into(),
        }
    }

    /// The same report, saying what the caller could not do.
    pub fn with_what(mut self, what: impl Into<String>) -> Report {
        self.what = what.into();
        self
    }
}

impl std::fmt::Display for Report {
    /// The line the CLI prints: `WHAT: REASON [code: CODE] SUGGESTION`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} [code: {}] {}",
            self.what, self.reason, self.code, self.suggestion
        )
    }
}

/// A request type and the type of its reply.
pub trait Ask: Clone + Into<Request> {
    type Reply: Serialize + DeserializeOwned;
}

/// Every request a daemon answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status(Status),
    Gc(Gc),
    TrashLs(TrashLs),
    TrashRestore(TrashRestore),
    TrashPurge(TrashPurge),
    VersionsLs(VersionsLs),
    VersionsRestore(VersionsRestore),
    Find(Find),
    Du(Du),
    Changes(Changes),
    IndexVerify(IndexVerify),
    IndexRebuild(IndexRebuild),
    Remount(Remount),
    Stats(Stats),
    SnapshotCreate(SnapshotCreate),
    SnapshotLs(SnapshotLs),
    SnapshotRm(SnapshotRm),
    SnapshotDiff(SnapshotDiff),
    SnapshotRestore(SnapshotRestore),
    Receive(Receive),
    Publish(Publish),
    ScrubRemote(ScrubRemote),
}

impl Request {
    /// The `cmd` of the request (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status(_) => "status",
            Request::Gc(_) => "gc",
            Request::TrashLs(_) => "trash_ls",
            Request::TrashRestore(_) => "trash_restore",
            Request::TrashPurge(_) => "trash_purge",
            Request::VersionsLs(_) => "versions_ls",
            Request::VersionsRestore(_) => "versions_restore",
            Request::Find(_) => "find",
            Request::Du(_) => "du",
            Request::Changes(_) => "changes",
            Request::IndexVerify(_) => "index_verify",
            Request::IndexRebuild(_) => "index_rebuild",
            Request::Remount(_) => "remount",
            Request::Stats(_) => "stats",
            Request::SnapshotCreate(_) => "snapshot_create",
            Request::SnapshotLs(_) => "snapshot_ls",
            Request::SnapshotRm(_) => "snapshot_rm",
            Request::SnapshotRestore(_) => "snapshot_restore",
            Request::Receive(_) => "receive",
            Request::SnapshotDiff(_) => "snapshot_diff",
            Request::Publish(_) => "publish",
            Request::ScrubRemote(_) => "scrub_remote",
        }
    }

    /// How long the daemon may wait for its index before it answers.
    pub fn wait_ms(&self) -> u64 {
        match self {
            Request::Find(r) => r.wait_ms.unwrap_or(0),
            Request::Du(r) => r.wait_ms.unwrap_or(0),
            Request::Changes(r) => r.wait_ms.unwrap_or(0),
            Request::IndexVerify(r) => r.wait_ms,
            _ => 0,
        }
    }
}

/// Declare that `$req` is answered by `$reply` and is a variant of `Request`.
macro_rules! asks {
    ($($req:ident => $reply:ty),* $(,)?) => {$(
        impl Ask for $req {
            type Reply = $reply;
        }
        impl From<$req> for Request {
            fn from(r: $req) -> Request {
                Request::$req(r)
            }
        }
    )*};
}

asks! {
    Status => StatusReply,
    Gc => GcReport,
    TrashLs => TrashList,
    TrashRestore => Restored,
    TrashPurge => Purged,
    VersionsLs => VersionList,
    VersionsRestore => VersionRestored,
    Find => Found,
    Du => DuReply,
    Changes => ChangeList,
    IndexVerify => Verified,
    IndexRebuild => Rebuilt,
    Remount => Remounted,
    Stats => StatsReply,
    SnapshotCreate => SnapshotMade,
    SnapshotLs => SnapshotList,
    SnapshotRm => SnapshotRemoved,
    SnapshotDiff => SnapshotChanges,
    SnapshotRestore => SnapshotRestored,
    Receive => StreamReceived,
    Publish => crate::store::remote::publish::PublishReport,
    ScrubRemote => crate::store::check::RemoteScrubReport,
}

// ---- Requests ----

/// The state of the store and of the daemon answering.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {}

/// Collect unreferenced blobs while the filesystem runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Gc {
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default = "default_grace")]
    pub grace: u64,
    /// A store on an object store: the grace period of the bucket's gc, in seconds
    /// (None: `remote::gc::DEFAULT_GRACE`).
    #[serde(default)]
    pub remote_grace: Option<u64>,
}

/// `scrub --remote`: verify the object store's copy of the store (reads only).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScrubRemote {}

fn default_grace() -> u64 {
    3600
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrashLs {}

/// `mount -o remount,ro|rw`: turn the mount read-only (open files committed first) or
/// back to read-write, in the kernel and in the daemon.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Remount {
    pub read_only: bool,
    /// Kernel flags to change at the same time (nosuid, suid, nodev, dev, noexec, exec,
    /// noatime, atime, sync, async, dirsync); the others are kept as they are.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Restore by id, id prefix or original path; `to` another path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrashRestore {
    pub sel: WirePath,
    #[serde(default)]
    pub to: Option<WirePath>,
}

/// Purge one id, or those older than `older_than` seconds, or (neither) all.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrashPurge {
    #[serde(default)]
    pub older_than: Option<u64>,
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionsLs {
    /// Relative to the filesystem root.
    pub path: WirePath,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionsRestore {
    pub path: WirePath,
    pub rev: String,
}

/// `decofs find`: the index's answer, as find(1) would list it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Find {
    pub path: WirePath,
    /// The name the start is shown with (it is listed when it matches).
    pub start_name: WirePath,
    #[serde(default)]
    pub name: Option<WirePath>,
    /// f, d, l, p, s, c or b (checked by the daemon).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// "+" (more than), "-" (less than) or "=" (exactly) `size` bytes.
    #[serde(default)]
    pub size_op: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    /// Modified after this time.
    #[serde(default)]
    pub newer_secs: Option<i64>,
    #[serde(default)]
    pub newer_nanos: Option<u32>,
    /// Wait up to this long for a lagging index.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Answer from a lagging index.
    #[serde(default)]
    pub stale: bool,
}

/// `decofs du`: recursive totals.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Du {
    pub path: WirePath,
    #[serde(default)]
    pub depth: u32,
    #[serde(default)]
    pub wait_ms: Option<u64>,
    #[serde(default)]
    pub stale: bool,
}

/// `decofs changes`: the change log after `since`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Changes {
    #[serde(default)]
    pub since: Option<u64>,
    #[serde(default = "default_limit")]
    pub limit: u64,
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

fn default_limit() -> u64 {
    10_000
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexVerify {
    #[serde(default = "default_verify_wait")]
    pub wait_ms: u64,
}

fn default_verify_wait() -> u64 {
    60_000
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IndexRebuild {}

/// Publish the store's state to its object store now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Publish {}

/// Take a snapshot of the whole tree (named after the time when `name` is None).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotCreate {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotLs {}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotRm {
    pub name: String,
}

/// Make the live tree equal to snapshot `name`, whole or not at all (the state before
/// is kept as a new snapshot).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotRestore {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotRestored {
    pub restored: String,
    pub before: String,
    pub records: u64,
    pub entries: u64,
    pub removed: u64,
}

/// Receive the stream in file `input` (the CLI spools standard input there).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Receive {
    pub input: WirePath,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamReceived {
    pub snapshot: String,
    pub base: Option<String>,
    pub records: u64,
    pub entries: u64,
    pub blobs: u64,
    pub drops: u64,
}

/// What changed from snapshot `old` to snapshot `new` (None: the live tree).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotDiff {
    pub old: String,
    #[serde(default)]
    pub new: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotMade {
    pub name: String,
    pub created: i64,
    pub generation: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotItem {
    pub name: String,
    pub created: i64,
    pub generation: u64,
    /// Records and entries copied because they changed after the snapshot.
    pub copies: u64,
    /// Bytes of blobs only this snapshot names (what removing it frees).
    pub held_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotRemoved {
    pub name: String,
    pub bytes_freed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotChange {
    /// created, deleted, modified or renamed.
    pub change: String,
    pub path: WirePath,
    #[serde(default)]
    pub from: Option<WirePath>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotChanges {
    pub changes: Vec<SnapshotChange>,
}

// ---- Replies ----
// `--json` prints these as they are; the CLI prints them through `serde_json::Value`,
// whose keys are sorted, so the output keeps the key order of earlier builds.

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    pub store: WirePath,
    pub store_id: String,
    pub format: u32,
    pub chunk_size: u32,
    pub mounted: bool,
    pub epoch: u64,
    pub holder: String,
    pub locked: bool,
    pub trash: TrashHeld,
    pub revisions: RevisionsHeld,
    /// Snapshots, the copies they keep, and the bytes of content those copies name.
    #[serde(default)]
    pub snapshots: SnapshotsHeld,
    /// The index's own status (`Index::status`), or `{"state": "off"|"closed", "note"}`.
    pub index: Value,
    /// A store bound to an object store: uploads, the local cache, the last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteHeld>,
    /// Present when a daemon answered.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonStatus>,
    /// Every daemon serving the store (added by the CLI side when a daemon answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<MountRef>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrashHeld {
    pub nodes: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotsHeld {
    pub count: u64,
    /// Records copied because they changed after a snapshot.
    pub copies: u64,
    /// Content bytes those copies name (shared with live files where unchanged).
    pub bytes: u64,
}

/// The object store of a bound store, as this process sees it (`live`: a read-write
/// process answered; otherwise only the binding is known).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteHeld {
    #[serde(flatten)]
    pub state: crate::store::blobs::RemoteState,
    pub live: bool,
    /// The writer's lease on the object store (None: this process holds none).
    #[serde(default)]
    pub lease: Option<crate::store::remote::lease::LeaseState>,
    /// The last publish, and what changed since.
    #[serde(default)]
    pub published: Option<crate::store::remote::publish::PublishState>,
    /// A follower's state (a read-only mount following the published state).
    #[serde(default)]
    pub follow: Option<crate::store::remote::follow::FollowState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevisionsHeld {
    pub count: u64,
    pub bytes: u64,
}

/// What the daemon answering `status` says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub mountpoint: WirePath,
    pub read_only: bool,
    pub uptime_secs: u64,
    pub open_sessions: u64,
    pub spare_nodes: u64,
    pub close_orders_blobs: bool,
    pub my_epoch: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountRef {
    pub pid: i32,
    pub mountpoint: WirePath,
    pub writer: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrashList {
    pub entries: Vec<TrashItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrashItem {
    pub id: String,
    /// Unix seconds.
    pub deleted_at: i64,
    /// The original path (through the trashed directories it was deleted with), if
    /// its directory is not gone for good.
    pub origin: Option<WirePath>,
    pub origin_name: WirePath,
    /// file, dir, symlink, ... (lowercase).
    pub kind: String,
    pub size: u64,
    pub stored: u64,
    /// The id of the trashed directory it was deleted out of; null for a top entry
    /// (what the user deleted).
    #[serde(default)]
    pub within: Option<String>,
    /// Nodes deleted with it, itself included (its tree, for a directory).
    #[serde(default)]
    pub nodes: u64,
    /// Bytes those nodes hold.
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remounted {
    pub read_only: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Restored {
    pub restored_to: WirePath,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Purged {
    pub nodes: u64,
    pub revisions: u64,
    pub bytes_freed: u64,
    pub skipped_open: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionList {
    pub versions: Vec<Version>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Version {
    pub rev: String,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nanos: u32,
    pub stored: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionRestored {
    pub restored: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Found {
    /// false: the index lagged and the request allowed a stale answer.
    pub consistent: bool,
    /// Relative to the start.
    pub paths: Vec<WirePath>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DuReply {
    pub consistent: bool,
    pub entries: Vec<DuEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DuEntry {
    /// Relative to the start.
    pub path: WirePath,
    pub bytes: u64,
    pub files: u64,
    pub dirs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeList {
    pub log_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The index's state (current, lagging, dirty, reconciling).
    pub index: Value,
    pub changes: Vec<ChangeItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeItem {
    pub seq: u64,
    pub at: i64,
    pub at_nanos: u32,
    pub op: String,
    pub node: Option<String>,
    pub path: Option<WirePath>,
    pub to: Option<WirePath>,
    pub reconciled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verified {
    pub equal: bool,
    pub nodes: u64,
    pub entries: u64,
    pub totals: u64,
    pub examples: Vec<VerifyExample>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyExample {
    pub what: String,
    pub path: WirePath,
}

/// What `Index::reconcile` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rebuilt {
    pub at: u64,
    /// build (first) or full.
    pub kind: String,
    pub reason: String,
    pub duration_ms: u64,
    pub nodes: u64,
    pub repaired: u64,
    pub repaired_nodes: u64,
    pub repaired_entries: u64,
    pub repaired_totals: u64,
}

// ---- The wire ----

/// One request line (without the newline).
pub fn encode_request(req: &Request) -> String {
    serde_json::to_string(req).expect("requests serialize")
}

/// One reply line (without the newline): the answer or the report.
pub fn encode_reply<T: Serialize>(r: &Result<T, Report>) -> String {
    match r {
        Ok(v) => serde_json::to_string(v),
        Err(rep) => serde_json::to_string(rep),
    }
    .expect("replies serialize")
}

/// Read a request line.
pub fn decode_request(line: &str) -> Result<Request, Report> {
    serde_json::from_str(line).map_err(|e| Report::bad_request(&e))
}

/// Read a reply line: an object with a `"code"` is a report, anything else the answer.
pub fn decode_reply<T: DeserializeOwned>(line: &str) -> Result<T, Report> {
    let bad = |e: serde_json::Error| Report::reply(&Error::Daemon(format!("bad reply: {e}")));
    let v: Value = serde_json::from_str(line).map_err(bad)?;
    if v.get("code").is_some_and(Value::is_string) {
        let mut rep = serde_json::from_value::<Report>(v).map_err(bad)?;
        // Earlier builds' daemons replied {error, code, suggestion}: their error is the
        // reason, which the CLI's own `what` would otherwise replace.
        if rep.reason.is_empty() {
            rep.reason = rep.what.clone();
        }
        return Err(rep);
    }
    serde_json::from_value(v).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An earlier build's daemon replied `{error, code, suggestion}`: the CLI's line
    /// still says why, not `cannot ...:  [code: ...]`.
    #[test]
    fn an_earlier_daemons_error_keeps_its_reason() {
        let line = r#"{"error":"no space left on the store's disk","code":"no_space","suggestion":"free space"}"#;
        let rep = decode_reply::<Value>(line)
            .unwrap_err()
            .with_what("cannot list the trash");
        assert_eq!(
            rep.to_string(),
            "cannot list the trash: no space left on the store's disk [code: no_space] free space"
        );
    }

    #[test]
    fn requests_keep_the_wire_of_earlier_builds() {
        let r: Request = TrashLs {}.into();
        assert_eq!(encode_request(&r), r#"{"cmd":"trash_ls"}"#);
        let r: Request = serde_json::from_value(json!({"cmd": "gc", "dry_run": true})).unwrap();
        assert!(matches!(
            r,
            Request::Gc(Gc {
                dry_run: true,
                grace: 3600,
                remote_grace: None
            })
        ));
        let r: Request = serde_json::from_value(
            json!({"cmd": "trash_restore", "sel": {"hex": "ff"}, "to": null}),
        )
        .unwrap();
        match r {
            Request::TrashRestore(t) => assert_eq!(t.sel.as_bytes(), b"\xff"),
            _ => panic!("wrong variant"),
        }
        let e = serde_json::from_str::<Request>(r#"{"cmd":"nope"}"#).unwrap_err();
        let rep = Report::bad_request(&e);
        assert_eq!(rep.code, "invalid_argument");
        assert!(rep.reason.contains("unknown variant"), "{}", rep.reason);
    }

    #[test]
    fn replies_and_reports_are_told_apart() {
        let ok: Result<Purged, Report> =
            decode_reply(r#"{"nodes":1,"revisions":2,"bytes_freed":3,"skipped_open":0}"#);
        assert_eq!(ok.unwrap().revisions, 2);
        let err = decode_reply::<Purged>(&encode_reply::<Purged>(&Err(Report::reply(
            &Error::NotInTrash("x".into()),
        ))))
        .unwrap_err();
        assert_eq!(err.code, "not_in_trash");
        // A report of an earlier daemon: no "reason".
        let old = decode_reply::<Purged>(r#"{"error":"boom","code":"io_error","suggestion":"s"}"#)
            .unwrap_err();
        assert_eq!((old.what.as_str(), old.code.as_str()), ("boom", "io_error"));
        let garbage = decode_reply::<Purged>("{").unwrap_err();
        assert_eq!(garbage.code, "daemon_failed");
    }

    #[test]
    fn status_with_and_without_a_daemon() {
        let mut s = StatusReply {
            store: WirePath::new("/s"),
            store_id: "id".into(),
            format: 1,
            chunk_size: 4096,
            mounted: false,
            epoch: 3,
            holder: String::new(),
            locked: false,
            trash: TrashHeld { nodes: 0, bytes: 0 },
            revisions: RevisionsHeld { count: 0, bytes: 0 },
            snapshots: SnapshotsHeld::default(),
            index: json!({"state": "closed"}),
            remote: None,
            daemon: None,
            mounts: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("pid").is_none() && v.get("mounts").is_none());
        let back: StatusReply = serde_json::from_value(v).unwrap();
        assert!(back.daemon.is_none());
        s.daemon = Some(DaemonStatus {
            pid: 7,
            mountpoint: WirePath::new("/m"),
            read_only: false,
            uptime_secs: 1,
            open_sessions: 0,
            spare_nodes: 2,
            close_orders_blobs: true,
            my_epoch: None,
        });
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["pid"], json!(7));
        assert_eq!(v["my_epoch"], Value::Null);
        let back: StatusReply = serde_json::from_value(v).unwrap();
        assert_eq!(back.daemon.unwrap().pid, 7);
    }
}
