//! The CLI's side of the control channel: ask the store's daemon if one runs, else
//! answer on the store (or its index) directly, so commands work mounted or not.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::answer::{self, IndexAnswer, StoreAnswer};
use super::locate::resolve;
use super::protocol::{
    decode_reply, encode_request, Ask, MountRef, Report, Request, Status, StatusReply,
};
use super::registry::daemons;
use crate::index::Index;
use crate::jsonpath::WirePath;
use crate::store::error::IoContext;
use crate::store::{OpenOptions, Result, Store};

/// Ask the daemon behind `socket` one question, waiting up to `timeout` for the answer.
pub fn call<A: Ask>(
    socket: &Path,
    req: A,
    timeout: Duration,
) -> std::result::Result<A::Reply, Report> {
    let line = exchange(socket, &req.into(), timeout).map_err(|e| Report::reply(&e))?;
    decode_reply(&line)
}

fn exchange(socket: &Path, req: &Request, timeout: Duration) -> Result<String> {
    let mut s = UnixStream::connect(socket).ctx(|| format!("connect {}", socket.display()))?;
    s.set_read_timeout(Some(timeout)).ok();
    writeln!(s, "{}", encode_request(req)).ctx(|| "send request".into())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .ctx(|| "read reply".into())?;
    Ok(line)
}

fn local<T>(r: Result<T>) -> std::result::Result<T, Report> {
    r.map_err(|e| Report::reply(&e))
}

/// Run a store request: through the store's writer daemon if it runs (any daemon for a
/// request that changes nothing), else directly on the store (taking the lock when
/// `mutating`).
pub fn run<A: StoreAnswer>(
    store_path: &Path,
    req: A,
    mutating: bool,
) -> std::result::Result<A::Reply, Report> {
    let ds = daemons(store_path);
    let pick = ds
        .iter()
        .find(|d| d.writer)
        .or(if mutating { None } else { ds.first() });
    if let Some(d) = pick {
        return call(&d.socket, req, Duration::from_secs(60));
    }
    let store = local(Store::open(
        store_path,
        OpenOptions {
            read_only: !mutating,
            cache_bytes: 16 << 20,
        },
    ))?;
    local(req.answer(&store))
}

/// Run an index request: through the store's writer daemon if it runs, else on the
/// store directly (taking the writer lock, bringing the index up to date first).
pub fn run_index<A: IndexAnswer>(
    store_path: &Path,
    req: A,
) -> std::result::Result<A::Reply, Report> {
    let ds = daemons(store_path);
    if let Some(d) = ds.iter().find(|d| d.writer) {
        let wait = Into::<Request>::into(req.clone()).wait_ms();
        let timeout = Duration::from_millis(wait) + Duration::from_secs(3600);
        return call(&d.socket, req, timeout);
    }
    let store = Arc::new(local(Store::open(
        store_path,
        OpenOptions {
            read_only: false,
            cache_bytes: 16 << 20,
        },
    ))?);
    let ix = local(Index::open(store, false, Default::default()))?;
    let r = req.answer(&ix);
    ix.close();
    local(r)
}

/// `decofs status PATH`: ask a running daemon of the store, or read the store directly.
pub fn status(path: &Path) -> std::result::Result<StatusReply, Report> {
    let (store_path, _mnt) = local(resolve(path))?;
    let ds = daemons(&store_path);
    // Prefer the writer; a read-only mount answers too.
    if let Some(d) = ds.iter().find(|d| d.writer).or(ds.first()) {
        let mut v = call(&d.socket, Status {}, Duration::from_secs(60))?;
        v.mounts = Some(
            ds.iter()
                .map(|d| MountRef {
                    pid: d.pid,
                    mountpoint: WirePath::new(&d.mountpoint),
                    writer: d.writer,
                })
                .collect(),
        );
        return Ok(v);
    }
    let store = local(Store::open(
        &store_path,
        OpenOptions {
            read_only: true,
            cache_bytes: 1 << 20,
        },
    ))?;
    local(answer::status(&store, None))
}
