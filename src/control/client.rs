//! The CLI's side of the control channel: ask the store's daemon if one runs, else
//! answer on the store (or its index) directly, so commands work mounted or not. A
//! request that changes the store waits for its reply as long as the daemon lives (a
//! restore of a large tree takes minutes); one that changes nothing waits a bounded time.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::answer::{self, IndexAnswer, StoreAnswer};
use super::locate::resolve;
use super::protocol::{
    decode_reply, encode_request, Ask, MountRef, Report, Request, Status, StatusReply,
};
use super::registry::{daemons, Daemon};
use crate::host::proc_starttime;
use crate::index::Index;
use crate::jsonpath::WirePath;
use crate::store::error::IoContext;
use crate::store::{OpenOptions, Result, Store};

/// How long a request that changes nothing waits for its reply.
pub const READ_ONLY_WAIT: Duration = Duration::from_secs(60);

/// How often a caller waiting for a reply looks whether the daemon still lives.
const POLL: Duration = Duration::from_millis(500);

/// How long to wait for a daemon's reply.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// At most this long (and not past the daemon's end).
    Bounded(Duration),
    /// As long as the daemon lives: a request that changes the store (a restore or a
    /// purge of a large tree takes minutes) must not be abandoned while the daemon goes
    /// on with it. Ends when the daemon answers, closes the socket or exits.
    WhileAlive,
}

/// Ask the daemon behind `socket` one question, waiting up to `timeout` for the answer.
pub fn call<A: Ask>(
    socket: &Path,
    req: A,
    timeout: Duration,
) -> std::result::Result<A::Reply, Report> {
    let line = exchange(socket, None, &req.into(), Wait::Bounded(timeout), POLL)?;
    decode_reply(&line)
}

/// Ask the daemon `d` one question, waiting for its answer as `wait` says.
pub fn call_daemon<A: Ask>(
    d: &Daemon,
    req: A,
    wait: Wait,
) -> std::result::Result<A::Reply, Report> {
    let line = exchange(&d.socket, Some(d.pid), &req.into(), wait, POLL)?;
    decode_reply(&line)
}

/// The report of a daemon that did not answer: `daemon_failed`.
fn no_answer(reason: String, suggestion: &str) -> Report {
    Report {
        what: reason.clone(),
        code: "daemon_failed".into(),
        reason,
        suggestion: suggestion.into(),
    }
}

/// Send `req` on `socket` and read the one-line reply, reading in slices of `poll` so
/// that between them it can look whether the daemon `pid` (pid plus start time) still
/// lives and whether a bounded wait is over.
fn exchange(
    socket: &Path,
    pid: Option<i32>,
    req: &Request,
    wait: Wait,
    poll: Duration,
) -> std::result::Result<String, Report> {
    let started_at = pid.map(|p| (p, proc_starttime(p)));
    let mut s = super::registry::on_socket_path(socket, |p| UnixStream::connect(p))
        .ctx(|| format!("connect {}", socket.display()))
        .map_err(|e| Report::reply(&e))?;
    s.set_read_timeout(Some(poll)).ok();
    writeln!(s, "{}", encode_request(req))
        .ctx(|| "send request".into())
        .map_err(|e| Report::reply(&e))?;
    let who = match pid {
        Some(p) => format!("the daemon (pid {p})"),
        None => "the daemon".to_string(),
    };
    let start = Instant::now();
    let mut reader = BufReader::new(&s);
    let mut line = Vec::new();
    loop {
        // read_until keeps what it read before a timeout in `line`: reading on
        // continues the same line.
        match reader.read_until(b'\n', &mut line) {
            Ok(_) if line.ends_with(b"\n") => {
                return String::from_utf8(line).map_err(|_| {
                    no_answer(
                        format!("{who} sent a reply that is not UTF-8"),
                        "the daemon and this decofs may be different builds",
                    )
                })
            }
            // End of file before a whole line: the daemon closed the connection.
            Ok(_) => {
                return Err(no_answer(
                    format!("{who} closed the connection before it answered"),
                    "the request may have been carried out in part or not at all: see the \
                     store's log, STORE/decofs.log, and look before retrying",
                ))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                return Err(Report::reply(&crate::store::Error::io("read reply", e)));
            }
        }
        if let Some((p, t)) = started_at {
            if t.is_none() || proc_starttime(p) != t {
                return Err(no_answer(
                    format!("{who} exited before it answered"),
                    "the request may have been carried out in part or not at all: see the \
                     store's log, STORE/decofs.log, and look before retrying",
                ));
            }
        }
        if let Wait::Bounded(limit) = wait {
            if start.elapsed() >= limit {
                return Err(no_answer(
                    format!("{who} did not answer within {} s", limit.as_secs()),
                    "it may be busy with a long restore, purge or gc: try again later, or \
                     see the store's log, STORE/decofs.log",
                ));
            }
        }
    }
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
        // A change runs to its end in the daemon whatever the caller does: wait for it.
        let wait = if mutating {
            Wait::WhileAlive
        } else {
            Wait::Bounded(READ_ONLY_WAIT)
        };
        return call_daemon(d, req, wait);
    }
    let store = local(Store::open(
        store_path,
        OpenOptions {
            read_only: !mutating,
            cache_bytes: 16 << 20,
            ..Default::default()
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
        return call_daemon(d, req, Wait::Bounded(timeout));
    }
    let store = Arc::new(local(Store::open(
        store_path,
        OpenOptions {
            read_only: false,
            cache_bytes: 16 << 20,
            ..Default::default()
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
        let mut v = call_daemon(d, Status {}, Wait::Bounded(READ_ONLY_WAIT))?;
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
            ..Default::default()
        },
    ))?;
    local(answer::status(&store, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Status;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::thread::{self, JoinHandle};

    /// Short slices, so a late answer is many polls late.
    const TICK: Duration = Duration::from_millis(20);

    /// A stand-in daemon on a socket in `dir`: it reads one request line, then `serve`
    /// does what it likes with the connection.
    fn daemon(
        dir: &Path,
        serve: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (PathBuf, JoinHandle<()>) {
        let sock = dir.join("control.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let h = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut req = String::new();
            BufReader::new(&s).read_line(&mut req).unwrap();
            assert!(req.contains("\"cmd\""), "a request line: {req:?}");
            serve(s)
        });
        (sock, h)
    }

    fn me() -> Option<i32> {
        Some(std::process::id() as i32)
    }

    /// A change waits past any number of read slices for a daemon that lives, and a
    /// reply that arrives in pieces is read whole.
    #[test]
    fn a_change_waits_for_a_late_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = daemon(dir.path(), |mut s| {
            thread::sleep(TICK * 10);
            s.write_all(b"{\"late\":").unwrap();
            thread::sleep(TICK * 5);
            s.write_all(b"1}\n").unwrap();
        });
        let got = exchange(&sock, me(), &Status {}.into(), Wait::WhileAlive, TICK);
        h.join().unwrap();
        assert_eq!(got.unwrap(), "{\"late\":1}\n");
    }

    /// A read-only request gives up after its bound, with a code and a reason that say
    /// so (not `Resource temporarily unavailable`).
    #[test]
    fn a_query_gives_up_after_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (go, wait) = mpsc::channel::<()>();
        let (sock, h) = daemon(dir.path(), move |_s| {
            let _ = wait.recv();
        });
        let got = exchange(
            &sock,
            me(),
            &Status {}.into(),
            Wait::Bounded(TICK * 3),
            TICK,
        );
        go.send(()).unwrap();
        h.join().unwrap();
        let r = got.unwrap_err();
        assert_eq!(r.code, "daemon_failed", "{r}");
        assert!(r.reason.contains("did not answer within"), "{r}");
    }

    /// A daemon that closes the connection without a reply is named as such.
    #[test]
    fn a_closed_connection_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = daemon(dir.path(), drop);
        let got = exchange(&sock, me(), &Status {}.into(), Wait::WhileAlive, TICK);
        h.join().unwrap();
        let r = got.unwrap_err();
        assert_eq!(r.code, "daemon_failed", "{r}");
        assert!(r.reason.contains("closed the connection"), "{r}");
    }

    /// The daemon's process goes away while the socket stays open (here the socket is
    /// held by another process than the one named): the wait ends, naming the pid.
    #[test]
    fn a_daemon_that_exits_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let (go, wait) = mpsc::channel::<()>();
        let (sock, h) = daemon(dir.path(), move |_s| {
            let _ = wait.recv();
        });
        let killer = thread::spawn(move || {
            thread::sleep(TICK * 5);
            child.kill().unwrap();
            child.wait().unwrap();
        });
        let got = exchange(&sock, Some(pid), &Status {}.into(), Wait::WhileAlive, TICK);
        killer.join().unwrap();
        go.send(()).unwrap();
        h.join().unwrap();
        let r = got.unwrap_err();
        assert_eq!(r.code, "daemon_failed", "{r}");
        assert!(
            r.reason.contains(&format!("pid {pid}")) && r.reason.contains("exited"),
            "{r}"
        );
    }
}
