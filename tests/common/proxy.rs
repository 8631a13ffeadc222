//! A TCP proxy on 127.0.0.1 in front of an object store, for fault tests: the product
//! talks to `proxy.endpoint()`, the test switches `proxy.set(Mode::…)` at any moment.
//!
//! Threads: one accepting, two per relayed connection (one per direction). Every socket
//! has a short read/write timeout, so each thread sees a mode change, a reset or the
//! proxy's drop within `TICK`. Dropping the proxy closes the listener and every
//! connection and waits (at most `STOP_TIMEOUT`) for its threads to end.
//!
//! The client-to-server direction always runs through `RequestFilter`, an HTTP/1.1
//! request framer (heads; bodies by Content-Length or chunked, pipelined or not), so
//! `StripConditional` can start at any moment on a keep-alive connection. In the other
//! modes a stream it cannot parse is forwarded as it is from then on; in
//! `StripConditional` such a connection is closed rather than forwarded.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// How often a blocked proxy thread looks at the mode and its flags.
const TICK: Duration = Duration::from_millis(50);
/// The bound on dropping a proxy.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound on connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways as it comes.
    Pass,
    /// Forward each chunk read (either way) after this delay.
    Delay(Duration),
    /// Close new and existing connections at once, with a TCP reset.
    Reset,
    /// Accept and read, never answer or forward.
    Blackhole,
    /// Remove `If-None-Match` and `If-Match` request headers: a server that accepts the
    /// conditional headers and ignores them. (The request still carries a signature
    /// over them; SeaweedFS without identities checks none.)
    StripConditional,
    /// Pass this many more bytes from the server to the clients (all connections
    /// together), then switch to `Reset`: an answer cut off in the middle (a listing
    /// that fails after its first part).
    CutAfter(usize),
    /// Answer every request `503 Service Unavailable` without forwarding it (existing
    /// connections are closed when it starts): an object store that is up and failing.
    Unavailable,
}

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    stop: AtomicBool,
    conns: Mutex<Vec<Weak<Conn>>>,
    /// Live connection threads.
    threads: AtomicUsize,
    /// What `CutAfter` still lets through to the clients.
    budget: AtomicUsize,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn kill_all(&self) {
        let conns: Vec<Arc<Conn>> = {
            let mut v = self.conns.lock().unwrap();
            v.retain(|w| w.strong_count() > 0);
            v.iter().filter_map(Weak::upgrade).collect()
        };
        for c in conns {
            c.kill();
        }
    }
}

/// One client connection and, unless it was blackholed from the start, its connection
/// to the target. The sockets close when the last thread using them lets go.
struct Conn {
    client: TcpStream,
    server: Option<TcpStream>,
    killed: AtomicBool,
}

impl Conn {
    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Close both sockets with a reset: SO_LINGER 0 makes the final close send RST, and
    /// shutting down the read side wakes the threads blocked on them at once.
    fn kill(&self) {
        if self.killed.swap(true, Ordering::SeqCst) {
            return;
        }
        for s in std::iter::once(&self.client).chain(self.server.as_ref()) {
            linger_zero(s);
            let _ = s.shutdown(Shutdown::Read);
        }
    }
}

fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on the open socket `s` owns, reading a live `linger` of the size
    // passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

impl Proxy {
    /// A proxy on a free 127.0.0.1 port to 127.0.0.1:`target_port`, in `Mode::Pass`.
    pub fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        // Polled, so the acceptor sees `stop` within a tick.
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            target: SocketAddr::from((Ipv4Addr::LOCALHOST, target_port)),
            mode: Mutex::new(Mode::Pass),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            threads: AtomicUsize::new(0),
            budget: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(listener, sh))
            .unwrap();
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Switch the mode; `Reset` also closes every open connection at once.
    pub fn set(&self, mode: Mode) {
        if let Mode::CutAfter(n) = mode {
            self.shared.budget.store(n, Ordering::SeqCst);
        }
        *self.shared.mode.lock().unwrap() = mode;
        if matches!(mode, Mode::Reset | Mode::Unavailable) {
            self.shared.kill_all();
        }
    }

    /// Connections open now (relayed or blackholed).
    pub fn connections(&self) -> usize {
        let mut v = self.shared.conns.lock().unwrap();
        v.retain(|w| w.strong_count() > 0);
        v.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        self.shared.kill_all();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.shared.threads.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    while !sh.stopping() {
        match listener.accept() {
            Ok((client, _)) => accept_one(client, &sh),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn accept_one(client: TcpStream, sh: &Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let mode = sh.mode();
    if mode == Mode::Reset {
        linger_zero(&client);
        return;
    }
    if mode == Mode::Unavailable {
        let tsh = sh.clone();
        sh.threads.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("proxy-503".into())
            .spawn(move || {
                answer_unavailable(&tsh, client);
                tsh.threads.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            sh.threads.fetch_sub(1, Ordering::SeqCst);
        }
        return;
    }
    let server = if mode == Mode::Blackhole {
        None
    } else {
        match TcpStream::connect_timeout(&sh.target, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Some(s)
            }
            Err(_) => {
                // The target is down: the client sees its connection reset.
                linger_zero(&client);
                return;
            }
        }
    };
    for s in std::iter::once(&client).chain(server.as_ref()) {
        let _ = s.set_read_timeout(Some(TICK));
        let _ = s.set_write_timeout(Some(TICK));
    }
    let conn = Arc::new(Conn {
        client,
        server,
        killed: AtomicBool::new(false),
    });
    {
        let mut v = sh.conns.lock().unwrap();
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&conn));
    }
    let directions: &[Dir] = if conn.server.is_some() {
        &[Dir::Up, Dir::Down]
    } else {
        &[Dir::Hole]
    };
    for &dir in directions {
        let (tsh, tconn) = (sh.clone(), conn.clone());
        sh.threads.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || {
                match dir {
                    Dir::Hole => blackhole(&tsh, &tconn),
                    _ => relay(&tsh, &tconn, dir),
                }
                tsh.threads.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            sh.threads.fetch_sub(1, Ordering::SeqCst);
            conn.kill();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to server (through the request filter).
    Up,
    /// Server to client.
    Down,
    /// A connection accepted in `Blackhole`: read from the client, nothing else.
    Hole,
}

/// Read and discard until the connection is killed or the proxy stops (after the
/// client's end of stream, hold the connection open all the same: never answer).
fn blackhole(sh: &Shared, conn: &Conn) {
    let mut buf = vec![0u8; 64 << 10];
    let mut eof = false;
    while !sh.stopping() && !conn.killed() {
        if eof {
            thread::sleep(TICK);
            continue;
        }
        match (&conn.client).read(&mut buf) {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(e) if transient(&e) => {}
            Err(_) => eof = true,
        }
    }
    conn.kill();
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn relay(sh: &Shared, conn: &Conn, dir: Dir) {
    let server = conn.server.as_ref().unwrap();
    let (from, to) = match dir {
        Dir::Up => (&conn.client, server),
        _ => (server, &conn.client),
    };
    let mut filter = RequestFilter::new();
    // The request stream could not be parsed (in a mode that does not need it): bytes
    // go through as they are from then on.
    let mut raw = dir != Dir::Up;
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::new();
    loop {
        if sh.stopping() || conn.killed() {
            conn.kill();
            return;
        }
        let n = match (&*from).read(&mut buf) {
            Ok(0) => {
                // End of stream: pass the half-close on, unless blackholed (then hold).
                while sh.mode() == Mode::Blackhole && !sh.stopping() && !conn.killed() {
                    thread::sleep(TICK);
                }
                if sh.stopping() || conn.killed() {
                    conn.kill();
                } else {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => n,
            Err(e) if transient(&e) => continue,
            Err(_) => {
                conn.kill();
                return;
            }
        };
        let mode = sh.mode();
        out.clear();
        if raw {
            if dir == Dir::Up && mode == Mode::StripConditional {
                conn.kill();
                return;
            }
            out.extend_from_slice(&buf[..n]);
        } else if let Err(unsent) = filter.feed(&buf[..n], mode == Mode::StripConditional, &mut out)
        {
            if mode == Mode::StripConditional {
                conn.kill();
                return;
            }
            raw = true;
            out.extend_from_slice(&unsent);
        }
        match mode {
            Mode::Reset => {
                conn.kill();
                return;
            }
            Mode::Blackhole => continue,
            Mode::Delay(d) => {
                if !sleep_unless(sh, conn, d) {
                    conn.kill();
                    return;
                }
            }
            Mode::CutAfter(_) if dir == Dir::Down => {
                let mut take = 0;
                let _ = sh
                    .budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        take = left.min(out.len());
                        Some(left - take)
                    });
                let cut = take < out.len() || sh.budget.load(Ordering::SeqCst) == 0;
                let _ = write_all(sh, conn, to, &out[..take]);
                if cut {
                    *sh.mode.lock().unwrap() = Mode::Reset;
                    sh.kill_all();
                    return;
                }
                continue;
            }
            Mode::Pass | Mode::StripConditional | Mode::CutAfter(_) => {}
            Mode::Unavailable => {
                conn.kill();
                return;
            }
        }
        if write_all(sh, conn, to, &out).is_err() {
            conn.kill();
            return;
        }
    }
}

/// Answer the first request head read from `client` with a 503 and close the
/// connection (`Connection: close`: the client sends its next request on a new one).
fn answer_unavailable(sh: &Shared, mut client: TcpStream) {
    const ANSWER: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let _ = client.set_read_timeout(Some(TICK));
    let _ = client.set_write_timeout(Some(TICK * 20));
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while !sh.stopping() && sh.mode() == Mode::Unavailable && head.len() < 1 << 20 {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = client.write_all(ANSWER);
                    let _ = client.shutdown(Shutdown::Write);
                    break;
                }
            }
            Err(e) if transient(&e) => {}
            Err(_) => break,
        }
    }
    // What the client still sends (a request's body) is read and dropped for a moment,
    // so the answer is not lost to a reset.
    let end = Instant::now() + TICK * 10;
    while Instant::now() < end && matches!(client.read(&mut buf), Ok(n) if n > 0) {}
}

/// Sleep `d` in ticks; false if the connection was killed or the proxy stops meanwhile.
fn sleep_unless(sh: &Shared, conn: &Conn, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if sh.stopping() || conn.killed() {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(TICK));
    }
}

fn write_all(sh: &Shared, conn: &Conn, mut to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        if sh.stopping() || conn.killed() {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        match to.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// --- HTTP/1.1 request framing ----------------------------------------------------------

const MAX_HEAD: usize = 64 << 10;
const MAX_LINE: usize = 8 << 10;

/// Follows a stream of HTTP/1.1 requests (pipelined or not; bodies by Content-Length or
/// `Transfer-Encoding: chunked`, including trailers) and passes it on, optionally
/// without the `If-None-Match` and `If-Match` headers. Bodies go through unchanged (an
/// `aws-chunked` body is framed by one of the two and needs nothing more).
#[derive(Debug, Default)]
pub struct RequestFilter {
    state: State,
    /// A head or a chunk-framing line being collected (not yet passed on).
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailer,
}

impl RequestFilter {
    pub fn new() -> RequestFilter {
        RequestFilter::default()
    }

    /// Take the next bytes of the stream; append to `out` what is to be forwarded. With
    /// `strip`, heads completed by these bytes lose their conditional headers. On bytes
    /// that are not a request stream as understood: `Err` with every byte not yet put in
    /// `out` (the filter is then of no further use).
    pub fn feed(&mut self, input: &[u8], strip: bool, out: &mut Vec<u8>) -> Result<(), Vec<u8>> {
        let mut i = 0;
        while i < input.len() {
            match self.step(&input[i..], strip, out) {
                Ok(n) => i += n,
                Err(()) => {
                    let mut unsent = std::mem::take(&mut self.line);
                    unsent.extend_from_slice(&input[i..]);
                    return Err(unsent);
                }
            }
        }
        Ok(())
    }

    /// Consume a prefix of `input` (at least one byte): how many bytes.
    fn step(&mut self, input: &[u8], strip: bool, out: &mut Vec<u8>) -> Result<usize, ()> {
        match self.state {
            State::Body(left) | State::ChunkData(left) => {
                let n = (left as usize).min(input.len());
                out.extend_from_slice(&input[..n]);
                let left = left - n as u64;
                self.state = match (self.state, left) {
                    (State::Body(_), 0) => State::Head,
                    (State::Body(_), l) => State::Body(l),
                    (_, 0) => State::ChunkEnd,
                    (_, l) => State::ChunkData(l),
                };
                Ok(n)
            }
            State::ChunkEnd => {
                self.line.push(input[0]);
                if self.line.len() == 2 {
                    if self.line != b"\r\n" {
                        return Err(());
                    }
                    out.extend_from_slice(&self.line);
                    self.line.clear();
                    self.state = State::ChunkSize;
                }
                Ok(1)
            }
            State::Head | State::ChunkSize | State::Trailer => {
                let end: &[u8] = if self.state == State::Head {
                    b"\r\n\r\n"
                } else {
                    b"\r\n"
                };
                let max = if self.state == State::Head {
                    MAX_HEAD
                } else {
                    MAX_LINE
                };
                // Take bytes up to and including the end marker (which may straddle).
                let mut n = 0;
                let mut done = false;
                while n < input.len() {
                    self.line.push(input[n]);
                    n += 1;
                    if self.line.ends_with(end)
                        || (self.state == State::Head && self.line == b"\r\n")
                    {
                        done = true;
                        break;
                    }
                }
                if !done {
                    return if self.line.len() > max {
                        Err(())
                    } else {
                        Ok(n)
                    };
                }
                let line = std::mem::take(&mut self.line);
                match self.state {
                    State::Head if line == b"\r\n" => {
                        // An empty line before a request line, tolerated (RFC 9112 2.2).
                        out.extend_from_slice(&line);
                    }
                    State::Head => {
                        let (head, framing) = parse_head(&line, strip)?;
                        out.extend_from_slice(&head);
                        self.state = match framing {
                            Framing::Length(0) => State::Head,
                            Framing::Length(l) => State::Body(l),
                            Framing::Chunked => State::ChunkSize,
                        };
                    }
                    State::ChunkSize => {
                        let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| ())?;
                        let size = text
                            .split(';')
                            .next()
                            .unwrap_or("")
                            .trim_matches([' ', '\t']);
                        let size = u64::from_str_radix(size, 16).map_err(|_| ())?;
                        out.extend_from_slice(&line);
                        self.state = if size == 0 {
                            State::Trailer
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    _ => {
                        // A trailer line; the empty one ends the message.
                        out.extend_from_slice(&line);
                        if line == b"\r\n" {
                            self.state = State::Head;
                        }
                    }
                }
                Ok(n)
            }
        }
    }
}

enum Framing {
    Length(u64),
    Chunked,
}

/// A request head (ending in CRLF CRLF): what to forward and how its body is framed.
fn parse_head(head: &[u8], strip: bool) -> Result<(Vec<u8>, Framing), ()> {
    // Every line with its CRLF, less the empty line that ends the head.
    let mut rest = &head[..head.len() - 2];
    let mut lines = Vec::new();
    while !rest.is_empty() {
        let i = rest.windows(2).position(|w| w == b"\r\n").ok_or(())?;
        if rest[..i].iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(()); // a bare CR or LF
        }
        lines.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    let mut lines = lines.into_iter();
    let request_line = lines.next().ok_or(())?;
    let rl = std::str::from_utf8(request_line).map_err(|_| ())?;
    let parts: Vec<&str> = rl.split(' ').collect();
    if parts.len() != 3 || parts[0].is_empty() || !parts[2].starts_with("HTTP/1.") {
        return Err(());
    }
    let mut out = Vec::with_capacity(head.len());
    out.extend_from_slice(request_line);
    out.extend_from_slice(b"\r\n");
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').ok_or(())?;
        let name = &line[..colon];
        let token = |b: &u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(b);
        if name.is_empty() || !name.iter().all(token) {
            return Err(()); // also obs-fold, a line starting with whitespace
        }
        let value = std::str::from_utf8(&line[colon + 1..])
            .map_err(|_| ())?
            .trim();
        let name = std::str::from_utf8(name).map_err(|_| ())?;
        if name.eq_ignore_ascii_case("content-length") {
            let l: u64 = value.parse().map_err(|_| ())?;
            if length.is_some_and(|x| x != l) {
                return Err(());
            }
            length = Some(l);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        }
        if strip
            && (name.eq_ignore_ascii_case("if-none-match") || name.eq_ignore_ascii_case("if-match"))
        {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let framing = match chunked {
        Some(true) => Framing::Chunked,
        // A transfer coding other than chunked last: the length is unknowable.
        Some(false) => return Err(()),
        None => Framing::Length(length.unwrap_or(0)),
    };
    Ok((out, framing))
}
