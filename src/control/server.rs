//! The daemon's side of the control channel: a root-only unix socket, one thread per
//! connection, one request line answered by one reply line. A request whose handler
//! panics is answered with an `internal_error` report and logged; the daemon goes on
//! (its locks are `parking_lot` locks, which a panic does not poison).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use super::answer::{self, DaemonInfo, IndexAnswer, StoreAnswer};
use super::protocol::{decode_request, encode_reply, Report, Request};
use super::registry::socket_path;
use crate::store::error::IoContext;
use crate::store::{Error, Result, Store};

/// A request handler: the reply line for a request, or the report of its failure.
pub type Handler = dyn Fn(Request) -> std::result::Result<String, Report> + Send + Sync;

/// Serve control requests for a daemon's store in a background thread. Returns the
/// socket path.
pub fn serve(store: Arc<Store>, info: DaemonInfo) -> Result<PathBuf> {
    let path = socket_path(&store.layout.root, std::process::id());
    let _ = fs::remove_file(&path);
    let listener = super::registry::on_socket_path(&path, |p| UnixListener::bind(p))
        .ctx(|| format!("bind {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .ctx(|| "chmod control socket".into())?;
    serve_on(listener, Arc::new(move |req| answer(&store, &info, req)))?;
    Ok(path)
}

/// Accept connections on `listener` in a background thread, each handled on its own.
pub fn serve_on(listener: UnixListener, handler: Arc<Handler>) -> Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let handler = handler.clone();
                let spawned = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || handle(conn, &*handler));
                if let Err(e) = spawned {
                    log::error!("control: cannot start a thread for a connection: {e}");
                }
            }
        })
        .ctx(|| "spawn control thread".into())?;
    Ok(())
}

fn handle(conn: UnixStream, handler: &Handler) {
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).is_err() {
        return;
    }
    let reply = reply_to(&line, handler);
    let mut w = &conn;
    let _ = writeln!(w, "{reply}");
}

/// The reply line to a request line. Never panics: a handler's panic becomes an
/// `internal_error` report.
pub fn reply_to(line: &str, handler: &Handler) -> String {
    let req = match decode_request(line) {
        Ok(r) => r,
        Err(rep) => return encode_reply::<()>(&Err(rep)),
    };
    let cmd = req.name();
    match crate::panics::catch(|| handler(req)) {
        Ok(Ok(reply)) => reply,
        Ok(Err(rep)) => encode_reply::<()>(&Err(rep)),
        Err(msg) => {
            log::error!("control: request {cmd} panicked: {msg}; answered internal_error");
            encode_reply::<()>(&Err(Report::internal(format!(
                "the daemon failed answering {cmd}: {msg}"
            ))))
        }
    }
}

/// A typed answer as a reply line.
fn line<T: serde::Serialize>(r: Result<T>) -> std::result::Result<String, Report> {
    match r {
        Ok(v) => Ok(encode_reply::<T>(&Ok(v))),
        Err(e) => Err(Report::reply(&e)),
    }
}

/// A daemon's answer to one request.
fn answer(store: &Store, info: &DaemonInfo, req: Request) -> std::result::Result<String, Report> {
    let index = || match &info.index {
        Ok(ix) => Ok(ix.as_ref()),
        Err(why) => Err(Error::IndexUnavailable(why.clone())),
    };
    match req {
        Request::Status(_) => line(answer::status(store, Some(info))),
        Request::Gc(r) => line(r.answer(store)),
        Request::TrashLs(r) => line(r.answer(store)),
        Request::TrashRestore(r) => line(r.answer(store)),
        Request::TrashPurge(r) => line(r.answer(store)),
        Request::VersionsLs(r) => line(r.answer(store)),
        Request::VersionsRestore(r) => line(r.answer(store)),
        Request::Find(r) => line(index().and_then(|ix| r.answer(ix))),
        Request::Du(r) => line(index().and_then(|ix| r.answer(ix))),
        Request::Changes(r) => line(index().and_then(|ix| r.answer(ix))),
        Request::IndexVerify(r) => line(index().and_then(|ix| r.answer(ix))),
        Request::IndexRebuild(r) => line(index().and_then(|ix| r.answer(ix))),
        Request::Remount(r) => line(answer::remount(store, info, &r)),
        Request::Stats(_) => line(super::stats::answer(info, store.read_only())),
        Request::SnapshotCreate(r) => line(r.answer(store)),
        Request::SnapshotLs(r) => line(r.answer(store)),
        Request::SnapshotRm(r) => line(r.answer(store)),
        Request::SnapshotDiff(r) => line(r.answer(store)),
        Request::SnapshotRestore(r) => line(r.answer(store)),
        Request::Receive(r) => line(r.answer(store)),
        Request::Publish(r) => line(r.answer(store)),
        Request::ScrubRemote(r) => line(r.answer(store)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Purged;
    use crate::control::protocol::{decode_reply, encode_request, TrashLs, TrashPurge};

    fn ask(sock: &std::path::Path, line: &str) -> String {
        let mut s = UnixStream::connect(sock).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).unwrap();
        reply
    }

    /// A handler that panics answers internal_error, and the server answers the next
    /// 1,000 requests.
    #[test]
    fn a_panicking_request_is_answered_and_the_server_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let handler: Arc<Handler> = Arc::new(|req| match req {
            Request::TrashLs(_) => panic!("injected panic"),
            _ => Ok(encode_reply::<Purged>(&Ok(Purged {
                nodes: 1,
                revisions: 0,
                bytes_freed: 0,
                skipped_open: 0,
            }))),
        });
        serve_on(UnixListener::bind(&sock).unwrap(), handler).unwrap();
        let rep =
            decode_reply::<Purged>(&ask(&sock, &encode_request(&TrashLs {}.into()))).unwrap_err();
        assert_eq!(rep.code, "internal_error");
        assert!(rep.reason.contains("injected panic"), "{}", rep.reason);
        let purge = encode_request(&TrashPurge::default().into());
        for _ in 0..1000 {
            assert_eq!(
                decode_reply::<Purged>(&ask(&sock, &purge)).unwrap().nodes,
                1
            );
        }
    }

    #[test]
    fn unknown_and_malformed_requests_get_a_report() {
        let never: &Handler = &|_| panic!("not called");
        for line in [
            "{\"cmd\":\"nope\"}",
            "not json",
            "{\"cmd\":\"versions_ls\"}",
        ] {
            let rep = decode_reply::<Purged>(&reply_to(line, never)).unwrap_err();
            assert_eq!(rep.code, "invalid_argument", "{line}");
            assert!(rep.reason.starts_with("bad request: "), "{}", rep.reason);
        }
    }
}
