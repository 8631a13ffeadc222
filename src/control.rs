//! The control channel between the CLI and a running mount: a root-only unix socket
//! `STORE/sessions/control.<pid>.sock`, one JSON request line, one JSON reply line.
//! Also the offline answers (store not mounted), so commands work either way.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::index::query::{FindReq, Fresh, SizeCmp};
use crate::index::Index;
use crate::store::error::IoContext;
use crate::store::layout::Layout;
use crate::store::trash::{PurgeReport, PurgeSel, TrashEntry};
use crate::store::{lock, Error, Kind, Result, Store};

/// What a daemon knows about itself.
#[derive(Clone)]
pub struct DaemonInfo {
    pub mountpoint: PathBuf,
    pub started: Instant,
    /// The index this mount keeps, or why it keeps none.
    pub index: std::result::Result<Arc<Index>, String>,
}

pub fn socket_path(store: &Path, pid: u32) -> PathBuf {
    store.join("sessions").join(format!("control.{pid}.sock"))
}

/// Serve control requests in a background thread. Returns the socket path.
pub fn serve(store: Arc<Store>, info: DaemonInfo) -> Result<PathBuf> {
    let path = socket_path(&store.layout.root, std::process::id());
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).ctx(|| format!("bind {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .ctx(|| "chmod control socket".into())?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let (store, info) = (store.clone(), info.clone());
                std::thread::spawn(move || handle(conn, &store, &info));
            }
        })
        .ctx(|| "spawn control thread".into())?;
    Ok(path)
}

fn handle(conn: UnixStream, store: &Store, info: &DaemonInfo) {
    let mut line = String::new();
    let mut r = BufReader::new(&conn);
    if r.read_line(&mut line).is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Value>(&line) {
        Ok(req) => match req.get("cmd").and_then(|c| c.as_str()) {
            Some("status") => status_value(store, Some(info)),
            Some(c) if INDEX_CMDS.contains(&c) => match &info.index {
                Ok(ix) => index_dispatch(ix, &req),
                Err(why) => Err(Error::IndexUnavailable(why.clone())),
            },
            _ => dispatch(store, &req),
        },
        Err(e) => Ok(json!({"error": format!("bad request: {e}"), "code": "invalid_argument"})),
    };
    let reply = reply.unwrap_or_else(
        |e| json!({"error": e.to_string(), "code": e.code(), "suggestion": e.suggestion()}),
    );
    let mut w = &conn;
    let _ = writeln!(w, "{reply}");
}

/// Ask the daemon behind `socket` one question.
pub fn request(socket: &Path, req: &Value) -> Result<Value> {
    request_within(socket, req, Duration::from_secs(60))
}

/// `request` waiting up to `timeout` for the answer.
pub fn request_within(socket: &Path, req: &Value, timeout: Duration) -> Result<Value> {
    let mut s = UnixStream::connect(socket).ctx(|| format!("connect {}", socket.display()))?;
    s.set_read_timeout(Some(timeout)).ok();
    writeln!(s, "{req}").ctx(|| "send request".into())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .ctx(|| "read reply".into())?;
    serde_json::from_str(&line).map_err(|e| Error::Daemon(format!("bad reply: {e}")))
}

/// A running daemon of a store: (pid, mountpoint, writer, control socket).
#[derive(Debug, Clone)]
pub struct Daemon {
    pub pid: i32,
    pub mountpoint: PathBuf,
    pub writer: bool,
    pub socket: PathBuf,
}

/// The live daemons serving a store, from their pid files.
pub fn daemons(store: &Path) -> Vec<Daemon> {
    let mut out = Vec::new();
    let Ok(it) = fs::read_dir(store.join("sessions")) else {
        return out;
    };
    for e in it.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mount."))
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let text = fs::read(e.path()).unwrap_or_default();
        let mut lines = text.split(|b| *b == b'\n');
        let mp = PathBuf::from(std::ffi::OsStr::from_bytes(lines.next().unwrap_or(b"")));
        let writer = lines.next() == Some(b"rw");
        // Pids are reused: the pid file also names the process's start time.
        let started = lines
            .next()
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.parse::<u64>().ok());
        if started.is_none() || started != proc_starttime(pid) {
            continue;
        }
        out.push(Daemon {
            pid,
            mountpoint: mp,
            writer,
            socket: socket_path(store, pid as u32),
        });
    }
    out
}

/// The start time of a process (clock ticks since boot), which with its pid names it
/// uniquely even after the pid is reused. None for a process that is gone or a zombie.
pub fn proc_starttime(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let mut f = after.split_whitespace();
    if f.next()? == "Z" {
        return None;
    }
    f.nth(18)?.parse().ok()
}

/// Remove pid files and sockets of daemons that are gone.
pub fn clean_stale(store: &Path) {
    let live: Vec<i32> = daemons(store).iter().map(|d| d.pid).collect();
    let Ok(it) = fs::read_dir(store.join("sessions")) else {
        return;
    };
    for e in it.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("mount.")
            .or_else(|| {
                name.strip_prefix("control.")
                    .and_then(|n| n.strip_suffix(".sock"))
            })
            .and_then(|n| n.parse::<i32>().ok());
        if let Some(pid) = pid {
            if !live.contains(&pid) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Resolve a CLI argument that is a mountpoint or a store to the store path (and the
/// mountpoint if it is one).
pub fn resolve(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let canon = fs::canonicalize(path).map_err(|_| Error::StoreNotFound(path.to_path_buf()))?;
    if let Some(m) = crate::mount::mounts()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == canon)
    {
        if m.fstype == "fuse.decofs" {
            return Ok((PathBuf::from(m.source), Some(canon)));
        }
    }
    Layout::new(&canon).read_format()?;
    Ok((canon, None))
}

/// Space held by trashed nodes and by revisions: (count, bytes) each. Revisions share
/// chunks with the live file, so their bytes are an upper bound of what they pin.
fn held_space(store: &Store) -> ((u64, u64), (u64, u64)) {
    let mut trash = (0, 0);
    if let Ok(it) = fs::read_dir(store.layout.trash()) {
        for e in it.flatten() {
            let Some(id) = fs::read_link(e.path())
                .ok()
                .and_then(|t| Layout::parse_entry_target(&t))
            else {
                continue;
            };
            if let Ok(r) = store.records.read(id) {
                trash.0 += 1;
                if r.kind == Kind::File {
                    trash.1 += r.stored;
                }
            }
        }
    }
    let mut revs = (0, 0);
    for id in store.revision_owners() {
        for (_, r) in store.revisions(id).unwrap_or_default() {
            revs.0 += 1;
            revs.1 += r.stored;
        }
    }
    (trash, revs)
}

/// The status of a store, from inside its daemon (`info`) or from outside (None).
pub fn status_value(store: &Store, info: Option<&DaemonInfo>) -> Result<Value> {
    let layout = &store.layout;
    let ((tn, tb), (rn, rb)) = held_space(store);
    let mut v = json!({
        "store": path_to_json(&layout.root),
        "store_id": store.format.store_id.to_string(),
        "format": crate::store::layout::FORMAT_VERSION,
        "chunk_size": store.format.chunk_size,
        "mounted": info.is_some(),
        "epoch": lock::read_epoch(layout)?,
        "holder": lock::holder(layout),
        "locked": lock::is_locked(layout),
        "trash": {"nodes": tn, "bytes": tb},
        "revisions": {"count": rn, "bytes": rb},
    });
    v["index"] = match info.map(|i| &i.index) {
        Some(Ok(ix)) => ix.status(),
        Some(Err(why)) => json!({"state": "off", "note": why}),
        None => json!({"state": "closed", "note": "not mounted: queries open the index directly"}),
    };
    if let Some(info) = info {
        v["pid"] = json!(std::process::id());
        v["mountpoint"] = path_to_json(&info.mountpoint);
        v["read_only"] = json!(store.read_only());
        v["uptime_secs"] = json!(info.started.elapsed().as_secs());
        v["open_sessions"] = json!(store.open_sessions());
        v["spare_nodes"] = json!(store.spare_nodes());
        v["close_orders_blobs"] = json!(store.close_orders_blobs());
        v["my_epoch"] = json!(store.epoch());
    }
    Ok(v)
}

/// `decofs status PATH`: ask a running daemon of the store, or read the store directly.
pub fn status(path: &Path) -> Result<Value> {
    let (store_path, _mnt) = resolve(path)?;
    let ds = daemons(&store_path);
    // Prefer the writer; a read-only mount answers too.
    let pick = ds.iter().find(|d| d.writer).or(ds.first());
    if let Some(d) = pick {
        let mut v = request(&d.socket, &json!({"cmd": "status"}))?;
        if v.get("error").is_none() {
            v["mounts"] = json!(ds
                .iter()
                .map(|d| json!({"pid": d.pid, "mountpoint": path_to_json(&d.mountpoint), "writer": d.writer}))
                .collect::<Vec<_>>());
            return Ok(v);
        }
        return Err(Error::Daemon(v["error"].as_str().unwrap_or("").to_string()));
    }
    let store = Store::open(
        &store_path,
        crate::store::OpenOptions {
            read_only: true,
            cache_bytes: 1 << 20,
        },
    )?;
    status_value(&store, None)
}

/// Human-readable status.
pub fn render_status(v: &Value) -> String {
    let mut s = String::new();
    let g = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    s.push_str(&format!(
        "store:      {}\n",
        g("store").as_str().unwrap_or("")
    ));
    if g("mounted").as_bool() == Some(true) {
        s.push_str(&format!(
            "mounted:    yes, on {} by pid {} ({}), up {} s\n",
            g("mountpoint").as_str().unwrap_or("?"),
            g("pid"),
            if g("read_only").as_bool() == Some(true) {
                "read-only"
            } else {
                "read-write"
            },
            g("uptime_secs")
        ));
        s.push_str(&format!(
            "sessions:   {} open write session(s)\n",
            g("open_sessions")
        ));
    } else {
        s.push_str("mounted:    no\n");
    }
    let holder = g("holder");
    let locked = g("locked").as_bool() == Some(true);
    s.push_str(&format!(
        "lock:       {} (epoch {})\n",
        if locked {
            format!("held by {}", holder.as_str().unwrap_or("?"))
        } else {
            "free".to_string()
        },
        g("epoch")
    ));
    s.push_str(&format!(
        "trash:      {} node(s), {} bytes\n",
        v["trash"]["nodes"], v["trash"]["bytes"]
    ));
    s.push_str(&format!(
        "revisions:  {} revision(s), {} bytes\n",
        v["revisions"]["count"], v["revisions"]["bytes"]
    ));
    let ix = &v["index"];
    match ix["state"].as_str().unwrap_or("") {
        "off" | "closed" => s.push_str(&format!(
            "index:      {}\n",
            ix["note"].as_str().unwrap_or("")
        )),
        state => {
            s.push_str(&format!(
                "index:      {state}; queue {} event(s), lag {} event(s) / {} ms, {} applied, {} dropped\n",
                ix["queue_depth"], ix["lag_events"], ix["lag_ms"], ix["applied"], ix["dropped"]
            ));
            if let Some(r) = ix["dirty_reason"].as_str() {
                s.push_str(&format!("            catching up: {r}\n"));
            }
            let lr = &ix["last_reconcile"];
            if !lr.is_null() {
                s.push_str(&format!(
                    "reconcile:  {} at {} ({}): repaired {}{}\n",
                    lr["kind"].as_str().unwrap_or("?"),
                    lr["at"],
                    lr["reason"].as_str().unwrap_or(""),
                    lr["repaired"],
                    match lr["duration_ms"].as_u64() {
                        Some(ms) => format!(", {} node(s) in {ms} ms", lr["nodes"]),
                        None => String::new(),
                    }
                ));
            }
            s.push_str(&format!(
                "changes:    {} .. {} (log {})\n",
                ix["changes"]["first_seq"],
                ix["changes"]["last_seq"],
                ix["changes"]["log_id"].as_str().unwrap_or("")
            ));
        }
    }
    s
}

/// A path in a JSON message: a string when it is UTF-8, else `{"hex": "..."}` of its
/// bytes, so names that are not UTF-8 survive the trip.
pub fn path_to_json(p: &Path) -> Value {
    match p.to_str() {
        Some(s) => json!(s),
        None => {
            json!({"hex": p.as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>()})
        }
    }
}

/// The inverse of `path_to_json` (None for null or malformed values).
pub fn json_to_path(v: &Value) -> Option<PathBuf> {
    if let Some(s) = v.as_str() {
        return Some(PathBuf::from(s));
    }
    let hex = v.get("hex")?.as_str()?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes?)))
}

/// A JSON path for people: lossy where it is not UTF-8.
pub fn show_path(v: &Value) -> Option<String> {
    json_to_path(v).map(|p| p.to_string_lossy().into_owned())
}

fn trash_entry_json(e: &TrashEntry) -> Value {
    json!({
        "id": e.id.to_string(),
        "deleted_at": e.at.secs,
        "origin": e.origin_path.as_deref().map(path_to_json),
        "origin_name": path_to_json(Path::new(std::ffi::OsStr::from_bytes(&e.origin_name))),
        "kind": format!("{:?}", e.kind).to_lowercase(),
        "size": e.size,
        "stored": e.stored,
    })
}

fn purge_json(r: &PurgeReport) -> Value {
    json!({"nodes": r.nodes, "revisions": r.revisions, "bytes_freed": r.bytes_freed, "skipped_open": r.skipped_open})
}

/// Undo requests, the same whether a daemon answers them or the CLI opened the store.
pub fn dispatch(store: &Store, req: &Value) -> Result<Value> {
    let s = |k: &str| req.get(k).and_then(|v| v.as_str()).map(str::to_string);
    match req.get("cmd").and_then(|c| c.as_str()).unwrap_or("") {
        "gc" => {
            let grace = Duration::from_secs(req["grace"].as_u64().unwrap_or(3600));
            let dry = req["dry_run"].as_bool() == Some(true);
            let rep = store.gc_online(dry, grace)?;
            Ok(serde_json::to_value(rep).expect("reports serialize"))
        }
        "trash_ls" => {
            let list = store.trash_list()?;
            Ok(json!({"entries": list.iter().map(trash_entry_json).collect::<Vec<_>>()}))
        }
        "trash_restore" => {
            let sel = req
                .get("sel")
                .and_then(json_to_path)
                .ok_or(Error::Invalid("missing selector"))?;
            let to = req.get("to").and_then(json_to_path);
            let at = store.trash_restore(sel.as_os_str(), to.as_deref())?;
            Ok(json!({"restored_to": path_to_json(&at)}))
        }
        "trash_purge" => {
            let sel = if let Some(id) = s("id") {
                PurgeSel::One(id)
            } else if let Some(secs) = req.get("older_than").and_then(|v| v.as_u64()) {
                PurgeSel::OlderThan(Duration::from_secs(secs))
            } else {
                PurgeSel::All
            };
            Ok(purge_json(&store.trash_purge(sel)?))
        }
        "versions_ls" => {
            let id =
                store.resolve_path(&req.get("path").and_then(json_to_path).unwrap_or_default())?;
            let revs = store.revisions(id)?;
            Ok(json!({"versions": revs.iter().map(|(t, r)| json!({
                "rev": t.to_string(),
                "size": r.size,
                "mtime": r.mtime.secs,
                "mtime_nanos": r.mtime.nanos,
                "stored": r.stored,
            })).collect::<Vec<_>>()}))
        }
        "versions_restore" => {
            let id =
                store.resolve_path(&req.get("path").and_then(json_to_path).unwrap_or_default())?;
            let rev: i128 = s("rev")
                .and_then(|r| r.parse().ok())
                .ok_or(Error::Invalid("bad revision id"))?;
            store.version_restore(id, rev)?;
            Ok(json!({"restored": rev.to_string()}))
        }
        _ => Err(Error::Invalid("unknown command")),
    }
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
            std::path::Component::ParentDir => {
                norm.pop();
            }
            std::path::Component::CurDir => {}
            other => norm.push(other),
        }
    }
    let mounts = crate::mount::mounts();
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
        if anc.join(crate::store::layout::FORMAT_FILE).exists() {
            let rel = norm
                .strip_prefix(anc)
                .unwrap_or(Path::new(""))
                .to_path_buf();
            return Ok((anc.to_path_buf(), None, rel));
        }
    }
    Err(Error::StoreNotFound(p.to_path_buf()))
}

/// A daemon's reply: an error reply becomes the error, keeping the daemon's code.
fn remote(v: Value) -> Result<Value> {
    match v.get("code").and_then(|c| c.as_str()) {
        Some(code) => Err(Error::Remote {
            code: code.to_string(),
            reason: v["error"].as_str().unwrap_or("").to_string(),
            suggestion: v["suggestion"].as_str().unwrap_or("").to_string(),
        }),
        None => Ok(v),
    }
}

/// Run an undo request: through the store's writer daemon if it runs, else directly on
/// the store (taking the lock when `mutating`).
pub fn run(store_path: &Path, req: &Value, mutating: bool) -> Result<Value> {
    let ds = daemons(store_path);
    let pick = ds
        .iter()
        .find(|d| d.writer)
        .or(if mutating { None } else { ds.first() });
    if let Some(d) = pick {
        return remote(request(&d.socket, req)?);
    }
    let store = Store::open(
        store_path,
        crate::store::OpenOptions {
            read_only: !mutating,
            cache_bytes: 16 << 20,
        },
    )?;
    dispatch(&store, req)
}

/// Requests the index answers.
pub const INDEX_CMDS: [&str; 5] = ["find", "du", "changes", "index_verify", "index_rebuild"];

fn path_bytes(v: &Value) -> Vec<u8> {
    json_to_path(v)
        .map(|p| p.into_os_string().into_vec())
        .unwrap_or_default()
}

fn fresh_of(req: &Value) -> Fresh {
    Fresh {
        wait: req
            .get("wait_ms")
            .and_then(|v| v.as_u64())
            .map(Duration::from_millis),
        stale: req.get("stale").and_then(|v| v.as_bool()) == Some(true),
    }
}

fn bytes_to_json(b: &[u8]) -> Value {
    path_to_json(Path::new(std::ffi::OsStr::from_bytes(b)))
}

/// Index requests, the same from a daemon or on an unmounted store.
pub fn index_dispatch(ix: &Index, req: &Value) -> Result<Value> {
    let rel = path_bytes(&req["path"]);
    match req.get("cmd").and_then(|c| c.as_str()).unwrap_or("") {
        "find" => {
            let kind = match req["type"].as_str() {
                None => None,
                Some(t) => Some(match t {
                    "f" => Kind::File,
                    "d" => Kind::Dir,
                    "l" => Kind::Symlink,
                    "p" => Kind::Fifo,
                    "s" => Kind::Socket,
                    "c" => Kind::CharDev,
                    "b" => Kind::BlockDev,
                    _ => return Err(Error::Invalid("--type takes f, d, l, p, s, c or b")),
                }),
            };
            let size = match (req["size_op"].as_str(), req["size"].as_u64()) {
                (Some("+"), Some(n)) => Some(SizeCmp::More(n)),
                (Some("-"), Some(n)) => Some(SizeCmp::Less(n)),
                (Some(_), Some(n)) => Some(SizeCmp::Exactly(n)),
                _ => None,
            };
            let newer = req["newer_secs"].as_i64().map(|secs| crate::store::Time {
                secs,
                nanos: req["newer_nanos"].as_u64().unwrap_or(0) as u32,
            });
            let fr = FindReq {
                rel,
                start_name: path_bytes(&req["start_name"]),
                name: req.get("name").filter(|v| !v.is_null()).map(path_bytes),
                kind,
                size,
                newer,
            };
            let (found, current) = ix.find(&fr, fresh_of(req))?;
            Ok(json!({
                "consistent": current,
                "paths": found.iter().map(|f| bytes_to_json(&f.rel)).collect::<Vec<_>>(),
            }))
        }
        "du" => {
            let depth = req["depth"].as_u64().unwrap_or(0) as u32;
            let (list, current) = ix.du(&rel, depth, fresh_of(req))?;
            Ok(json!({
                "consistent": current,
                "entries": list.iter().map(|(p, s)| json!({
                    "path": bytes_to_json(p), "bytes": s.bytes, "files": s.files, "dirs": s.dirs,
                })).collect::<Vec<_>>(),
            }))
        }
        "changes" => {
            if let Some(w) = fresh_of(req).wait {
                ix.ready(Some(w), false)?;
            }
            let limit = req["limit"].as_u64().unwrap_or(10_000).clamp(1, 1_000_000) as usize;
            let since = req["since"].as_u64();
            let (first, _) = {
                let (_, f, l, _) = ix.changes(u64::MAX - 1, 1)?;
                (f, l)
            };
            let since = since.unwrap_or(first.saturating_sub(1));
            let (list, first, last, log_id) = ix.changes(since, limit)?;
            Ok(json!({
                "log_id": log_id,
                "first_seq": first,
                "last_seq": last,
                "index": ix.status()["state"].clone(),
                "changes": list.iter().map(|c| json!({
                    "seq": c.seq,
                    "at": c.at.secs,
                    "at_nanos": c.at.nanos,
                    "op": c.op,
                    "node": c.node.map(|n| n.to_string()),
                    "path": c.path.as_deref().map(bytes_to_json),
                    "to": c.to.as_deref().map(bytes_to_json),
                    "reconciled": c.reconciled,
                })).collect::<Vec<_>>(),
            }))
        }
        "index_verify" => {
            let wait = Duration::from_millis(req["wait_ms"].as_u64().unwrap_or(60_000));
            let d = ix.verify(wait)?;
            Ok(json!({
                "equal": d.is_empty(),
                "nodes": d.nodes,
                "entries": d.entries,
                "totals": d.totals,
                "examples": d.changed.iter().map(|(what, p, _)| json!({
                    "what": what, "path": bytes_to_json(p),
                })).collect::<Vec<_>>(),
            }))
        }
        "index_rebuild" => ix.reconcile("requested by decofs index rebuild"),
        _ => Err(Error::Invalid("unknown command")),
    }
}

/// Run an index request: through the store's writer daemon if it runs, else on the
/// store directly (taking the writer lock, bringing the index up to date first).
pub fn run_index(store_path: &Path, req: &Value) -> Result<Value> {
    let ds = daemons(store_path);
    if let Some(d) = ds.iter().find(|d| d.writer) {
        let wait = req["wait_ms"].as_u64().unwrap_or(0);
        return remote(request_within(
            &d.socket,
            req,
            Duration::from_millis(wait) + Duration::from_secs(3600),
        )?);
    }
    let store = Arc::new(Store::open(
        store_path,
        crate::store::OpenOptions {
            read_only: false,
            cache_bytes: 16 << 20,
        },
    )?);
    let ix = Index::open(store, false, Default::default())?;
    let r = index_dispatch(&ix, req);
    ix.close();
    r
}
