//! The harness of the remote-storage tests, tested: a real SeaweedFS (`common::seaweed`)
//! and the fault proxy in front of it (`common::proxy`).

mod common;

use common::proxy::{Mode, Proxy, RequestFilter};
use common::seaweed::{self, HttpConn, S3Client, Seaweed, BUCKET};
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Eight writers at once on one key with `If-None-Match: *`, through `client`: the
/// statuses.
fn race(client: &S3Client, key: &str) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (c, b, key) = (client.clone(), barrier.clone(), key.to_string());
            thread::spawn(move || {
                b.wait();
                c.put_if_none_match(&key, format!("writer {i}").as_bytes())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn two_servers_run_at_once_each_with_its_own_objects() {
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(Seaweed::start);
        let b = s.spawn(Seaweed::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.s3_port(), b.s3_port());
    assert_ne!(a.pid(), b.pid());
    a.put("only-a", b"a");
    b.put("only-b", b"b");
    assert_eq!(a.get("only-a").as_deref(), Some(&b"a"[..]));
    assert_eq!(b.get("only-b").as_deref(), Some(&b"b"[..]));
    assert_eq!(a.get("only-b"), None);
    assert_eq!(b.get("only-a"), None);
    assert_eq!(a.list(""), strings(&["only-a"]));
    assert_eq!(b.list(""), strings(&["only-b"]));

    assert_eq!(a.bucket(), BUCKET);
    assert_eq!(a.endpoint(), format!("http://127.0.0.1:{}", a.s3_port()));
    assert_eq!(a.url("x/y"), format!("s3://{BUCKET}/x/y"));
    let env = a.env();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("AWS_ENDPOINT_URL"), Some(a.endpoint()));
    assert_eq!(get("AWS_REGION").as_deref(), Some("us-east-1"));
    assert_eq!(get("AWS_ALLOW_HTTP").as_deref(), Some("true"));
    assert!(get("AWS_ACCESS_KEY_ID").is_some() && get("AWS_SECRET_ACCESS_KEY").is_some());
}

#[test]
fn put_get_list_delete_round_trip() {
    let sw = Seaweed::start();
    let keys = [
        "plain",
        "dir/sub/file",
        "dir/other",
        "sp ace & <amp> \"q\" 'a'",
        "ünïcödé/κλειδί",
        "+plus=eq?q#h%pct;semi",
    ];
    for (i, k) in keys.iter().enumerate() {
        sw.put(k, format!("value {i} of {k}").as_bytes());
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            sw.get(k),
            Some(format!("value {i} of {k}").into_bytes()),
            "{k}"
        );
    }
    assert_eq!(sorted(sw.list("")), sorted(strings(&keys)));
    assert_eq!(
        sorted(sw.list("dir/")),
        strings(&["dir/other", "dir/sub/file"])
    );
    assert_eq!(sw.list("ünï"), strings(&["ünïcödé/κλειδί"]));
    assert_eq!(sw.list("nothing-here/"), Vec::<String>::new());
    // Pages of two, joined by continuation tokens.
    assert_eq!(
        sorted(sw.client().list_paged("", Some(2))),
        sorted(strings(&keys))
    );

    // A large object, an overwrite, an empty object.
    let big = common::pattern(7, 0, 6 << 20);
    sw.put("big", &big);
    common::assert_bytes_eq(&sw.get("big").unwrap(), &big, "big object");
    sw.put("plain", b"damaged");
    assert_eq!(sw.get("plain").as_deref(), Some(&b"damaged"[..]));
    sw.put("empty", b"");
    assert_eq!(sw.get("empty").as_deref(), Some(&b""[..]));

    for k in keys {
        sw.delete(k);
        assert_eq!(sw.get(k), None, "{k} after delete");
    }
    sw.delete("never-was");
    assert_eq!(sorted(sw.list("")), strings(&["big", "empty"]));
}

#[test]
fn conditional_put_has_exactly_one_winner() {
    let sw = Seaweed::start();
    let statuses = race(&sw.client(), "race/key");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 412).count(),
        7,
        "{statuses:?}"
    );
    let winner = statuses.iter().position(|&s| s == 200).unwrap();
    assert_eq!(
        sw.get("race/key"),
        Some(format!("writer {winner}").into_bytes())
    );
    assert_eq!(sw.put_if_none_match("race/key", b"late"), 412);
}

/// Two conditional PUTs that must fail on `exists` (one chunked with a trailer, one by
/// Content-Length), then a GET, pipelined on one keep-alive connection to `port`:
/// the three responses.
fn pipelined_conditionals(port: u16) -> Vec<(u16, Vec<u8>)> {
    let mut c = HttpConn::connect(port, Duration::from_secs(10)).unwrap();
    let target = format!("/{BUCKET}/exists");
    let mut bytes = format!(
        "PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: *\r\n\
         Transfer-Encoding: chunked\r\n\r\n\
         6;ext=1\r\nchunk \r\n4\r\nbody\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    .into_bytes();
    bytes.extend(c.request_bytes("PUT", &target, &[("If-Match", "\"0123\"")], b"by length"));
    bytes.extend(c.request_bytes("GET", &target, &[], b""));
    c.send_raw(&bytes, Duration::from_secs(10)).unwrap();
    (0..3)
        .map(|_| {
            let r = c.read_response(false, Duration::from_secs(20)).unwrap();
            (r.status, r.body)
        })
        .collect()
}

#[test]
fn strip_conditional_proxy_makes_a_server_that_ignores_conditions() {
    let sw = Seaweed::start();
    let proxy = Proxy::start(sw.s3_port());
    proxy.set(Mode::StripConditional);
    let via = S3Client::new(proxy.port(), BUCKET);
    // Every one of the eight "wins": the server never saw the condition.
    let statuses = race(&via, "stripped/key");
    assert_eq!(statuses, vec![200; 8]);
    assert!(sw.get("stripped/key").unwrap().starts_with(b"writer "));
    // Straight to the server, the condition holds.
    assert_eq!(sw.put_if_none_match("stripped/key", b"x"), 412);

    // Pipelined requests on one connection, chunked and by length: straight to the
    // server both conditions fail; through the proxy both PUTs succeed.
    sw.put("exists", b"old");
    let direct = pipelined_conditionals(sw.s3_port());
    assert_eq!(
        direct,
        vec![
            (412, direct[0].1.clone()),
            (412, direct[1].1.clone()),
            (200, b"old".to_vec())
        ]
    );
    let stripped = pipelined_conditionals(proxy.port());
    let statuses: Vec<u16> = stripped.iter().map(|r| r.0).collect();
    assert_eq!(statuses, vec![200, 200, 200]);
    assert_eq!(stripped[2].1, b"by length");

    // A stream that is not HTTP: forwarded as it is in Pass (the server answers it),
    // closed in StripConditional (never forwarded).
    let garbage = b"NOT HTTP AT ALL\r\n\r\n";
    let mut c = HttpConn::connect(proxy.port(), Duration::from_secs(5)).unwrap();
    c.send_raw(garbage, Duration::from_secs(5)).unwrap();
    let t = Instant::now();
    assert!(c.read_response(false, Duration::from_secs(5)).is_err());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    proxy.set(Mode::Pass);
    let mut c = HttpConn::connect(proxy.port(), Duration::from_secs(5)).unwrap();
    c.send_raw(garbage, Duration::from_secs(5)).unwrap();
    let r = c.read_response(false, Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 400);
    // And Pass keeps the conditions.
    assert_eq!(via.put_if_none_match("stripped/key", b"y"), 412);
}

#[test]
fn proxy_pass_delay_reset_blackhole() {
    let sw = Seaweed::start();
    sw.put("k", b"value");
    let proxy = Proxy::start(sw.s3_port());
    assert_eq!(
        proxy.endpoint(),
        format!("http://127.0.0.1:{}", proxy.port())
    );
    let via = S3Client::new(proxy.port(), BUCKET);
    assert_eq!(via.get("k").as_deref(), Some(&b"value"[..]));
    assert_eq!(sorted(via.list("")), strings(&["k"]));

    // Delay: the request and the response each wait.
    proxy.set(Mode::Delay(Duration::from_millis(300)));
    let t = Instant::now();
    assert_eq!(via.get("k").as_deref(), Some(&b"value"[..]));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Reset: an open connection (a request half sent) is closed at once...
    proxy.set(Mode::Pass);
    let mut open = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    std::io::Write::write_all(&mut open, b"GET /decofs-test/k HTTP/1.1\r\nHost: x\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.connections() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(proxy.connections(), 1);
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    proxy.set(Mode::Reset);
    let r = open.read(&mut [0u8; 16]);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // ...and a new request fails promptly.
    let t = Instant::now();
    let r = via.request("GET", "k", &[], b"", Duration::from_secs(10));
    assert!(r.is_err(), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    proxy.set(Mode::Pass);
    assert_eq!(via.get("k").as_deref(), Some(&b"value"[..]));

    // Blackhole: a request times out, and nothing reached the server.
    proxy.set(Mode::Blackhole);
    let t = Instant::now();
    let r = via.request("PUT", "hole", &[], b"lost", Duration::from_secs(2));
    let took = t.elapsed();
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)),
        "{r:?}"
    );
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // An open connection goes silent too.
    proxy.set(Mode::Pass);
    let mut c = HttpConn::connect(proxy.port(), Duration::from_secs(5)).unwrap();
    c.send("GET", "/decofs-test/k", &[], b"", Duration::from_secs(5))
        .unwrap();
    let r = c.read_response(false, Duration::from_secs(10)).unwrap();
    assert_eq!(r.body, b"value");
    proxy.set(Mode::Blackhole);
    c.send("GET", "/decofs-test/k", &[], b"", Duration::from_secs(5))
        .unwrap();
    assert!(c.read_response(false, Duration::from_secs(1)).is_err());
    proxy.set(Mode::Pass);
    assert_eq!(sw.get("hole"), None);

    // Dropping the proxy, with connections open, is prompt and closes its port.
    proxy.set(Mode::Blackhole);
    let _held = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    let port = proxy.port();
    let t = Instant::now();
    drop(proxy);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let r = TcpStream::connect(("127.0.0.1", port));
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "{r:?}"
    );
}

fn port_refused(port: u16) -> bool {
    matches!(
        TcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

#[test]
fn restart_serves_what_was_written_and_stop_leaves_nothing_running() {
    let mut sw = Seaweed::start();
    let big = common::pattern(3, 0, 5 << 20);
    sw.put("before/big", &big);
    sw.put("before/small", b"small");
    let pid = sw.pid().unwrap();

    sw.restart();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "old pid {pid} still there"
    );
    common::assert_bytes_eq(&sw.get("before/big").unwrap(), &big, "big after restart");
    assert_eq!(sw.get("before/small").as_deref(), Some(&b"small"[..]));
    assert_eq!(
        sorted(sw.list("before/")),
        strings(&["before/big", "before/small"])
    );

    // A crash (SIGKILL right after the PUT was acknowledged) loses nothing either.
    sw.put("after/crash", b"acknowledged");
    sw.kill();
    sw.restart();
    assert_eq!(sw.get("after/crash").as_deref(), Some(&b"acknowledged"[..]));

    let pid = sw.pid().unwrap();
    let port = sw.s3_port();
    let t = Instant::now();
    sw.stop();
    assert!(
        t.elapsed() < seaweed::TERM_GRACE + Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(sw.pid(), None);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still there"
    );
    assert!(port_refused(port), "port {port} still open");
    let s3_sock = format!("/tmp/seaweedfs-s3-{port}.sock");
    assert!(!Path::new(&s3_sock).exists(), "{s3_sock} left behind");
    sw.stop(); // a no-op

    // Three starts, each ready; one crash; two stops.
    let log = std::fs::read_to_string(sw.log_path()).unwrap();
    let count = |what: &str| {
        log.matches(&format!("==== decofs test harness: {what}"))
            .count()
    };
    assert_eq!(count("ready after"), 3, "{log}");
    assert_eq!(count("killed (SIGKILL)"), 1, "{log}");
    assert_eq!(
        count("SIGKILL after SIGTERM") + count("stopped by SIGTERM"),
        2,
        "{log}"
    );
}

/// Three pipelined requests: a body holding header-like text (by length), a chunked
/// body with an extension and a trailer, and a bodiless GET.
const PIPELINED: &[u8] = b"PUT /b/one HTTP/1.1\r\nHost: h\r\nIf-None-Match: *\r\n\
Content-Length: 20\r\n\r\nIf-Match: inside\r\n\r\n\
PUT /b/two HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nif-match: \"e\"\r\n\
content-encoding: aws-chunked\r\n\r\n\
5;chunk-signature=ab\r\nIf-No\r\n3\r\nne:\r\n0\r\nx-amz-checksum-crc32: AA==\r\n\r\n\
GET /b/three HTTP/1.1\r\nIF-NONE-MATCH: \"x\"\r\nHost: h\r\n\r\n";

const STRIPPED: &[u8] = b"PUT /b/one HTTP/1.1\r\nHost: h\r\n\
Content-Length: 20\r\n\r\nIf-Match: inside\r\n\r\n\
PUT /b/two HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\
content-encoding: aws-chunked\r\n\r\n\
5;chunk-signature=ab\r\nIf-No\r\n3\r\nne:\r\n0\r\nx-amz-checksum-crc32: AA==\r\n\r\n\
GET /b/three HTTP/1.1\r\nHost: h\r\n\r\n";

fn filter_all(input: &[u8], strip: bool, piece: usize) -> Result<Vec<u8>, Vec<u8>> {
    let mut f = RequestFilter::new();
    let mut out = Vec::new();
    for p in input.chunks(piece) {
        f.feed(p, strip, &mut out)?;
    }
    Ok(out)
}

#[test]
fn request_filter_frames_pipelined_requests() {
    for piece in [1, 2, 3, 7, 64, PIPELINED.len()] {
        assert_eq!(
            filter_all(PIPELINED, true, piece).unwrap(),
            STRIPPED,
            "pieces of {piece}"
        );
        assert_eq!(filter_all(PIPELINED, false, piece).unwrap(), PIPELINED);
    }
    // An empty line before a request is passed on.
    let lead = b"\r\nGET / HTTP/1.1\r\nIf-Match: x\r\n\r\n";
    assert_eq!(
        filter_all(lead, true, 1).unwrap(),
        b"\r\nGET / HTTP/1.1\r\n\r\n"
    );

    // What is not understood is an error that hands back every byte not passed on.
    let bad: [&[u8]; 5] = [
        b"NOT HTTP\r\n\r\n",
        b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
    ];
    for b in bad {
        let mut f = RequestFilter::new();
        let mut out = Vec::new();
        let unsent = f.feed(b, true, &mut out).unwrap_err();
        let mut all = out.clone();
        all.extend(unsent);
        assert_eq!(all, b, "{}", String::from_utf8_lossy(b));
    }
}

#[test]
fn http_client_reads_chunked_and_pipelined_responses() {
    let two = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
4;x=y\r\nWiki\r\n6\r\npedia \r\n0\r\nTrailer: t\r\n\r\n\
HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc";
    let (r, used) = seaweed::parse_response(two, false, false).unwrap().unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"Wikipedia "[..]));
    let (r, rest) = seaweed::parse_response(&two[used..], false, false)
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status, &r.body[..], rest),
        (404, &b"abc"[..], two.len() - used)
    );
    // Incomplete: more is needed.
    assert!(seaweed::parse_response(&two[..40], false, false)
        .unwrap()
        .is_none());
    // No length: the body runs to the end of the connection.
    let eof = b"HTTP/1.1 200 OK\r\n\r\nto the end";
    assert!(seaweed::parse_response(eof, false, false)
        .unwrap()
        .is_none());
    let (r, _) = seaweed::parse_response(eof, false, true).unwrap().unwrap();
    assert_eq!(r.body, b"to the end");
    // XML escapes as SeaweedFS writes them.
    assert_eq!(
        seaweed::xml_unescape("&#34;a&#34; &amp; &lt;b&gt; &#x41;&apos;&bogus;"),
        "\"a\" & <b> A'&bogus;"
    );
}
