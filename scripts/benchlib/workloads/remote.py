"""remote: decofs on an S3 object store (issue 26), against JuiceFS on the same object store
(only when asked for: `--workloads remote`; alone, it also runs the default groups).

Every remote figure comes from the one SeaweedFS the run starts on 127.0.0.1 (seaweed.py),
shared by the targets `decofs-remote` (a store bound to a prefix of a bucket) and
`juicefs-s3` (JuiceFS formatted with `--storage s3` on another bucket). The default groups
run on them in the same run as on the local baselines (disk, decofs, bindfs, juicefs), so
the main table has their ratios. A decofs-remote workload waits for local durability only
(blobs upload in the background), as decofs does. Then this group measures:

1. Time to remote durability after the workloads, on decofs-remote: `decofs publish MNT
   --wait`, then `decofs status` polled every 0.2 s until no upload is pending.
   remote_publish_after is the publish, remote_durable_after the publish + the drain.
2. Takeover, for each N of BENCH_REMOTE_NODES (default 10000,100000): a writer store bound
   to a prefix of its own creates N files of BENCH_REMOTE_FILE_BYTES (2 KiB: a file of at
   most 1,024 bytes lives inline in its record and has no blob to fetch) with distinct
   contents, in directories of 100 under directories of 100 (4 processes at once;
   to_build_N), publishes (`publish --wait`, to_publish_N), waits for its uploads
   (to_durable_N, from the publish's start), and unmounts cleanly, which gives the lease
   back (to_umount_N). Then every repetition, on another "host" (a new store directory),
   after a drop of the kernel caches: to_clone_N `decofs clone s3://B/P STORE2`;
   to_mount_N `decofs mount STORE2 MNT -o allow_other` (it takes the lease) until the
   mountpoint lists; to_find_N a first `find . | wc -l` of the tree (the count must equal
   the writer's); to_read_N `find . -type f -print0 | xargs -0 cat > /dev/null`, every
   content fetched from the bucket. The contents are then checked (untimed): the sha256
   of all files in name order must equal the writer's. The clone is unmounted (the lease
   goes back) and deleted.
3. First read of an evicted file: remote_cold_read, a file of BENCH_REMOTE_BIG_MIB (1 GiB)
   of random data written once per target; every repetition, `cat FILE > /dev/null` after
   making it cold, then its sha256 checked against what was written (untimed). On
   decofs-remote the file is on a store of its own mounted with `-o cache_size=
   BENCH_REMOTE_CACHE` (64M): after the write it is published, its uploads waited for
   (big_durable: from the end of the write), and, before every read, its local blobs must
   be evicted down to the bound; then unmount, drop caches, mount: the read fetches and
   verifies. On juicefs-s3: unmount, its cache directory removed, drop caches, mount. On
   the others: the target's cold() (remount, drop caches): a local cold read.
"""

import json
import os
import shlex
import sys
import time

from .. import common, seaweed, targets
from ..common import BenchError, Interrupted, env_int, log, run
from ..figures import esc, fmt, median, speed_ratio, times

TARGETS = list(seaweed.TARGETS)  # what the group adds to the default targets
LEASE_WAIT = 120  # s a clone's mount is retried while refused with store_locked

# `python3 -c MAKE DIR N BYTES PROCS`: N files of BYTES bytes (distinct contents), file i in
# DIR/a{i // 10000}/b{i // 100}, made by PROCS processes at once (each takes whole leaves).
MAKE = r"""
import os, sys
d, n, size, procs = sys.argv[1], *map(int, sys.argv[2:5])
PER, base = 100, os.urandom(size)
leaves = (n + PER - 1) // PER
def work(k):
    for j in range(k, leaves, procs):
        sub = f"{d}/a{j // 100:03d}/b{j:05d}"
        os.makedirs(sub, exist_ok=True)
        for i in range(j * PER, min(n, (j + 1) * PER)):
            fd = os.open(f"{sub}/f{i:07d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, i.to_bytes(8, "little") + base[8:])
            os.close(fd)
os.makedirs(d)
pids = []
for k in range(min(procs, leaves)):
    pid = os.fork()
    if pid == 0:
        try:
            work(k)
            os._exit(0)
        except BaseException as e:
            print(f"creator {k}: {e}", file=sys.stderr, flush=True)
            os._exit(1)
    pids.append(pid)
if any(os.waitpid(p, 0)[1] != 0 for p in pids):
    sys.exit("a creating process failed")
"""

# `python3 -c WRITE FILE MIB`: MIB MiB of random data, fsynced; prints its sha256.
WRITE = r"""
import hashlib, os, sys
path, mib = sys.argv[1], int(sys.argv[2])
h = hashlib.sha256()
with open(path, "wb") as f:
    for _ in range(mib):
        block = os.urandom(1 << 20)
        h.update(block)
        f.write(block)
    f.flush()
    os.fsync(f.fileno())
print(h.hexdigest())
"""

# The sha256 of every file's contents under the current directory, in name order.
DIGEST = "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 cat | sha256sum"


def configure(cfg):
    q = cfg.quick
    sizes = os.environ.get("BENCH_REMOTE_NODES", "1000,10000" if q else "10000,100000")
    cfg.remote_nodes = sorted({int(s) for s in sizes.split(",") if s})
    cfg.remote_file_bytes = env_int("BENCH_REMOTE_FILE_BYTES", 2048)
    cfg.remote_big_mib = env_int("BENCH_REMOTE_BIG_MIB", 128 if q else 1024)
    cfg.remote_cache = os.environ.get("BENCH_REMOTE_CACHE", "16M" if q else "64M")
    cfg.remote_wait = env_int("BENCH_REMOTE_WAIT", 1800)  # s for uploads or an eviction


def summary(cfg):
    """The group's sizes, for the report's Configuration block."""
    return {"remote_nodes": ",".join(map(str, cfg.remote_nodes)),
            "remote_file_bytes": cfg.remote_file_bytes, "remote_big_mib": cfg.remote_big_mib,
            "remote_cache": cfg.remote_cache, "remote_wait_s": cfg.remote_wait}


def bash(script, **kw):
    """`run` of a bash script under pipefail."""
    return run(["bash", "-o", "pipefail", "-c", script], **kw)


def poll(h, what, done, limit):
    """Poll h's `decofs status` every 0.2 s until done(remote status); returns it."""
    deadline = time.monotonic() + limit
    while True:
        st = h.remote_status()
        if done(st):
            return st
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not after {limit} s: {st}")
        time.sleep(0.2)


def failed(h, what, err):
    """A BenchError for the text `err` that holds decofs's `--json` error (one JSON object),
    with the last warnings and errors of the store's log."""
    try:
        e, _ = json.JSONDecoder().raw_decode(err[err.index('{"'):])
        msg = f"{e.get('code')}: {e.get('reason') or e.get('error')}"
    except ValueError:
        msg = err.strip()[-250:]
    try:
        with open(os.path.join(h.store, "decofs.log"), errors="replace") as f:
            bad = [ln.strip() for ln in f if " ERROR " in ln or " WARN " in ln][-2:]
    except OSError:
        bad = []
    return BenchError(f"{what}: {msg}" + (f"; decofs.log: {' | '.join(bad)}" if bad else ""))


def durable(h, limit):
    """`decofs publish MNT --wait`, then until no upload is pending: (publish s, total s)."""
    t0 = time.perf_counter()
    pub, out, err = run([h.bin, "--json", "publish", h.mnt, "--wait"], timeout=limit,
                        env=h.env, check=False)
    if not out.strip():
        raise failed(h, "decofs publish MNT --wait", err)
    log(f"{h.name}: publish --wait {pub:.2f} s: {out.strip()}")
    poll(h, "uploads drained", lambda st: st.get("pending_blobs") == 0, limit)
    return pub, time.perf_counter() - t0


def blob_bytes(store):
    """Bytes of the blob files on the local disk of a store."""
    total = 0
    for dp, _, fns in os.walk(os.path.join(store, "blobs")):
        for fn in fns:
            try:
                total += os.lstat(os.path.join(dp, fn)).st_size
            except FileNotFoundError:
                pass  # evicted while we walked
    return total


def helper(b, name, prefix):
    """A decofs-remote store of the group's own in r/NAME of the scratch area (short: the
    daemon's control socket is in the store, and a Unix socket's path has at most 107
    bytes), bound to `prefix`, cleaned up by targets.tear_down whatever happens (and by
    `drop` when done with)."""
    h = targets.DecofsRemote(os.path.join(b.cfg.work, "r", name), b.cfg, prefix=prefix)
    h.name = f"decofs-remote ({prefix})"
    targets.HELPERS.append(h)
    return h


def drop(h):
    """Unmount a helper, stop its daemon and delete its directory."""
    h.cleanup()
    if h.mounted:
        raise BenchError(f"{h.mnt} still mounted")
    targets.HELPERS.remove(h)
    run(["rm", "-rf", "--one-file-system", h.root], timeout=3600, check=False)


def measure(b):
    c = b.cfg
    rt = next((t for t in b.live(0) if t.name == "decofs-remote"), None)
    if rt is None:
        b.notes.append("remote group: decofs-remote is not available; only the first read "
                       "of a large file was measured on the other targets")
    b.metric("remote_cold_read",
             f"First read (cat) of a {c.remote_big_mib:,} MiB file, cold: decofs-remote evicted "
             f"(cache_size={c.remote_cache}) and fetched, juicefs-s3 cache dir removed, the "
             "others remount + drop caches", "MiB/s", True, "remote")
    for key, label in (("remote_publish_after", "publish --wait after the workloads"),
                       ("remote_durable_after", "publish --wait + uploads drained, after the "
                                                "workloads"),
                       ("big_write", f"write {c.remote_big_mib:,} MiB + fsync on the cache-bound "
                                     "store"),
                       ("big_durable", "end of that write → published and uploaded")):
        b.metric(key, label, "s", False, "remote", table=False)
    for n in c.remote_nodes:
        for key, label in (("build", "writer: create the tree"),
                           ("publish", "writer: publish --wait"),
                           ("durable", "writer: publish --wait + uploads drained"),
                           ("umount", "writer: clean unmount (gives the lease back)"),
                           ("clone", "decofs clone"),
                           ("lease_wait", "the clone's mount refused (store_locked) until "
                                          "the writer's lease expired"),
                           ("mount", "decofs mount of the clone, until it answers"),
                           ("find", "first find . | wc -l"),
                           ("read", "read every file (cat), fetched from the bucket")):
            b.metric(f"to_{key}_{n}", f"takeover of {n:,} files: {label}", "s", False, "remote",
                     table=False)
    info = b.remote_info

    if rt is not None:
        def after(t):
            st = t.remote_status()
            info["pending_after_workloads"] = {k: st.get(k) for k in (
                "pending_blobs", "pending_bytes", "uploaded", "uploaded_bytes")}
            log(f"{t.name}: after the workloads: {info['pending_after_workloads']}")
            pub, total = durable(t, c.remote_wait)
            b.record("remote_publish_after", t, pub)
            b.record("remote_durable_after", t, total)

        b.guarded(["remote_publish_after", "remote_durable_after"], rt, lambda: after(rt))
        for n in c.remote_nodes:
            step = ["build"]  # the phase under way: a failure is its error, not the others'
            try:
                takeover(b, rt, n, step)
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                b.fail([f"to_{step[0]}_{n}"], rt, e)
    big_read(b, rt)


def takeover(b, rt, n, step):
    """The takeover of a store of n files; step[0] names the phase under way."""
    c = b.cfg
    w = helper(b, f"w{n}", f"takeover-{n}")
    w.setup()
    log(f"{w.name}: creating {n:,} files of {c.remote_file_bytes} bytes")
    dt, _, _ = run([sys.executable, "-c", MAKE, os.path.join(w.mnt, "tree"), str(n),
                    str(c.remote_file_bytes), "4"], timeout=c.timeout * 4)
    b.record(f"to_build_{n}", rt, dt)
    step[0] = "publish"
    pub, total = durable(w, c.remote_wait)
    b.record(f"to_publish_{n}", rt, pub)
    b.record(f"to_durable_{n}", rt, total)
    tree = os.path.join(w.mnt, "tree")
    _, out, _ = bash("find . | wc -l", cwd=tree, timeout=c.timeout)
    nodes = int(out)
    _, digest, _ = bash(DIGEST, cwd=tree, timeout=c.timeout)
    log(f"{w.name}: {nodes:,} nodes (files, directories and the tree's own), "
        f"built {dt:.1f} s, published {pub:.1f} s, uploaded {total:.1f} s")
    step[0] = "umount"
    dt, _, _ = run([w.bin, "umount", w.mnt], timeout=c.timeout)
    b.record(f"to_umount_{n}", rt, dt)
    url = w.url
    details = b.remote_info.setdefault("takeover", {})[str(n)] = {
        "nodes": nodes, "file_bytes": c.remote_file_bytes, "clones": []}
    for rep in range(c.reps):
        h = helper(b, f"c{n}.{rep}", f"clone-{n}-{rep}")
        os.makedirs(h.mnt)
        h.env = seaweed.client_env()
        s3 = seaweed.shared(c)
        common.drop_caches()
        log(f"{h.name}: clone, mount, find, read (rep {rep + 1})")
        step[0] = "clone"
        dt, out, err = run([h.bin, "--json", "clone", url, h.store, "--endpoint",
                            s3.endpoint, "--allow-http"], timeout=c.timeout, env=h.env,
                           check=False)
        if not out.strip():
            raise failed(h, f"decofs clone {url} STORE2", err)
        b.record(f"to_clone_{n}", rt, dt)
        step[0] = "mount"
        t0 = time.perf_counter()
        while True:  # refused (store_locked) while the writer's lease lives in the bucket
            t1 = time.perf_counter()
            try:
                h.mount()
                break
            except BenchError as e:
                # (the message's tail with "[code: store_locked]" may be cut off)
                if " is locked by " not in str(e) or t1 - t0 > LEASE_WAIT:
                    raise failed(h, "decofs mount STORE2 MNT -o allow_other", str(e))
                details.setdefault("refused", str(e)[str(e).find("store s3://"):][:300])
                time.sleep(0.5)
        os.listdir(h.mnt)
        b.record(f"to_mount_{n}", rt, time.perf_counter() - t1)
        b.record(f"to_lease_wait_{n}", rt, t1 - t0)
        tree = os.path.join(h.mnt, "tree")
        step[0] = "find"
        dt, out, _ = bash("find . | wc -l", cwd=tree, timeout=c.timeout)
        if int(out) != nodes:
            raise BenchError(f"the clone's tree has {int(out):,} nodes, the writer's {nodes:,}")
        b.record(f"to_find_{n}", rt, dt)
        step[0] = "read"
        dt, _, _ = bash("find . -type f -print0 | xargs -0 cat > /dev/null", cwd=tree,
                        timeout=c.timeout)
        b.record(f"to_read_{n}", rt, dt)
        st = h.remote_status()
        _, got, _ = bash(DIGEST, cwd=tree, timeout=c.timeout)
        if got != digest:
            raise BenchError(f"the clone's contents differ: sha256 {got.split()[0]}, "
                             f"the writer's {digest.split()[0]}")
        details["clones"].append({"fetched": st.get("fetched"), "sha256": "equal"})
        log(f"{h.name}: clone {b.values[f'to_clone_{n}'][rt.name][-1]:.1f} s, mount "
            f"{b.values[f'to_mount_{n}'][rt.name][-1]:.2f} s, find "
            f"{b.values[f'to_find_{n}'][rt.name][-1]:.1f} s, read {dt:.1f} s "
            f"({st.get('fetched')} blobs fetched)")
        drop(h)
    drop(w)  # not before: deleting its files takes long enough for the lease to expire


def big_read(b, rt):
    c = b.cfg
    mib = c.remote_big_mib
    where = {}  # target name -> (the mount the file is on, its path, its sha256)

    def evicted(h, limit):
        """Until the store's local blobs are within its cache bound (status: cache_limit)."""
        t0 = time.monotonic()
        while True:
            st = h.remote_status()
            local = blob_bytes(h.store)
            if st.get("cache_limit") and local <= st["cache_limit"]:
                return local, st
            if time.monotonic() - t0 > limit:
                raise BenchError(f"{local:,} bytes of blobs still on disk after {limit} s, "
                                 f"cache_limit {st.get('cache_limit')}: {st}")
            time.sleep(0.5)

    def prepare(t):
        m = t
        if t.name == "decofs-remote":
            m = helper(b, "evict", "evict")
            m.options = f"allow_other,cache_size={c.remote_cache}"
            m.setup()
        path = os.path.join(m.fsdir, "big.dat")
        log(f"{t.name}: writing {mib} MiB of random data")
        dt, out, _ = run([sys.executable, "-c", WRITE, path, str(mib)], timeout=c.timeout)
        where[t.name] = (m, path, out.strip())
        if m is not t:
            b.record("big_write", t, dt)
            _, total = durable(m, c.remote_wait)
            b.record("big_durable", t, total)
            local, st = evicted(m, c.remote_wait)
            log(f"{m.name}: published and uploaded {total:.1f} s after the write; "
                f"{local:,} bytes of blobs left on disk ({st.get('evicted')} evicted)")

    def one(t, rep):
        m, path, sha = where[t.name]
        if m is not t:
            local, st0 = evicted(m, c.remote_wait)
            m.unmount()
            common.drop_caches()
            m.mount()
        elif t.name == "juicefs-s3":
            t.unmount()
            run(["rm", "-rf", "--one-file-system", t.cache], timeout=c.timeout)
            common.drop_caches()
            t.mount()
        else:
            t.cold()
        log(f"{t.name}: first read of {mib} MiB, rep {rep + 1}")
        dt, _, _ = run(f"cat {shlex.quote(path)} > /dev/null", shell=True, timeout=c.timeout)
        b.record("remote_cold_read", t, mib / dt)
        if m is not t:
            st = m.remote_status()
            b.remote_info.setdefault("evicted_read", []).append(
                {"local_blob_bytes_before": local, "evicted_before": st0.get("evicted"),
                 "fetched": st.get("fetched"), "cache_limit": st.get("cache_limit")})
        _, out, _ = run(["sha256sum", path], timeout=c.timeout)
        if out.split()[0] != sha:
            raise BenchError(f"{path} reads sha256 {out.split()[0]}, {sha} was written")

    keys = ["remote_cold_read", "big_write", "big_durable"]
    b.each_target(keys, prepare)
    b.each_rep(keys, one, skip_failed=True)
    for t in b.live(0):
        if t.name in where:
            m, path, _ = where[t.name]
            if m is t:
                os.unlink(path)
            else:
                b.guarded(keys, t, lambda: drop(m))


# ----------------------------------------------------------------------------- report

def report_section(L, b, cfg, names):
    """Append the "Remote storage" section to the report's lines L (after the metadata
    index's), when the group ran."""
    if "remote" not in cfg.groups:
        return
    rn = "decofs-remote"
    L.append("## Remote storage")
    L.append("")
    L.append(f"One SeaweedFS ({cfg.versions.get('seaweedfs', 'weed')}, master, volume, filer "
             "and S3 gateway in one process) on 127.0.0.1, started by the run and shared: "
             f"`{rn}` is a store bound to a prefix of one bucket, `juicefs-s3` JuiceFS on "
             "another; the same disk holds the server's data, the stores and the baselines. "
             "A decofs-remote write is durable locally when it returns and uploads in the "
             "background; JuiceFS (no `--writeback`) uploads a file's blocks when it is "
             "closed or fsynced, so its workload times include the object store.")
    L.append("")

    def v(key, unit=""):
        vs = b.values.get(key, {}).get(rn)
        if vs:
            s = fmt(median(vs), b.metrics[key]["unit"]) + unit
            if len(vs) > 1:
                s += " (" + ", ".join(fmt(x, b.metrics[key]["unit"]) for x in vs) + ")"
            return s
        err = b.errors.get(key, {}).get(rn)
        return f"**error**: {esc(err)}" if err else "—"

    info = b.remote_info
    L.append("### Time to remote durability")
    L.append("")
    L.append("After the workloads of the table: `decofs publish MNT --wait`, then `decofs "
             "status` polled every 0.2 s until no upload is pending. And after writing the "
             f"{cfg.remote_big_mib:,} MiB file of the first-read row (fsync included), the "
             "same from the end of the write.")
    L.append("")
    L.append("| figure | decofs-remote |")
    L.append("|---|---:|")
    p = info.get("pending_after_workloads")
    if p:
        L.append(f"| waiting for upload at the end of the workloads | {p['pending_blobs']:,} "
                 f"blobs, {p['pending_bytes'] / 1e6:,.1f} MB (uploaded so far: "
                 f"{p['uploaded']:,} blobs, {p['uploaded_bytes'] / 1e6:,.0f} MB) |")
    L.append(f"| after the workloads: publish --wait | {v('remote_publish_after', ' s')} |")
    L.append(f"| after the workloads: publish --wait + uploads drained | "
             f"{v('remote_durable_after', ' s')} |")
    L.append(f"| write {cfg.remote_big_mib:,} MiB + fsync (cache_size={cfg.remote_cache}) | "
             f"{v('big_write', ' s')} |")
    L.append(f"| end of that write → published and uploaded | {v('big_durable', ' s')} |")
    L.append("")

    L.append("### Takeover")
    L.append("")
    L.append(f"A writer creates N files of {cfg.remote_file_bytes:,} bytes (distinct contents; "
             "files of at most 1,024 bytes live inline in their record and would have no blob "
             "to fetch) in directories of 100 under directories of 100, publishes, waits for "
             "its uploads and unmounts cleanly, which should give the lease back (a mount of "
             f"the clone refused with `store_locked` is retried every 0.5 s for up to "
             f"{LEASE_WAIT} s; the time refused is its own row). Then, per repetition, "
             "after a drop of the kernel caches, another store directory: `decofs clone`, "
             "`decofs mount` (takes the lease) until the mountpoint lists, a first "
             "`find . | wc -l` (checked against the writer's count), and "
             "`find . -type f -print0 | xargs -0 cat > /dev/null` (every content fetched "
             "from the bucket; the sha256 of all contents is checked after). Rates: nodes "
             "(files, directories and the tree itself) per second; for the read, files per "
             "second and MB/s.")
    L.append("")
    ns = cfg.remote_nodes
    tk = info.get("takeover", {})
    L.append("| phase | " + " | ".join(
        f"{n:,} files ({tk[str(n)]['nodes']:,} nodes)" if str(n) in tk else f"{n:,} files"
        for n in ns) + " |")
    L.append("|---|" + "---:|" * len(ns))
    for key, label in (("build", "writer: create the tree"), ("publish", "writer: publish --wait"),
                       ("durable", "writer: publish --wait + uploads drained"),
                       ("umount", "writer: clean unmount"), ("clone", "(a) decofs clone"),
                       ("lease_wait", "(b) mount refused (store_locked) while the writer's "
                                      "lease lives"),
                       ("mount", "(b) decofs mount, until it answers"),
                       ("find", "(c) first find \\| wc -l"),
                       ("read", "(d) read every file, fetched")):
        row = [label]
        for n in ns:
            k = f"to_{key}_{n}"
            cellv = v(k, " s")
            m = median(b.values.get(k, {}).get(rn, []))
            if m and str(n) in tk:
                d = tk[str(n)]
                if key == "read":
                    cellv += (f" · {n / m:,.0f} files/s · "
                              f"{n * d['file_bytes'] / m / 1e6:,.1f} MB/s")
                elif key not in ("umount", "lease_wait"):
                    cellv += f" · {d['nodes'] / m:,.0f} nodes/s"
            row.append(cellv)
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    for n in ns:
        if "refused" in tk.get(str(n), {}):
            L.append(f"- {n:,} files: the clone's mount was refused at first: "
                     f"{esc(tk[str(n)]['refused'])}")
            L.append("")

    L.append(f"### First read of a {cfg.remote_big_mib:,} MiB file")
    L.append("")
    L.append("`cat FILE > /dev/null` of a file of random data; its sha256 is checked after "
             f"every read. decofs-remote: a store mounted with `-o cache_size="
             f"{cfg.remote_cache}`, the file published and uploaded, its local blobs evicted "
             "down to the bound, then unmount, drop caches, mount: the read fetches and "
             "verifies. juicefs-s3: unmount, its cache directory removed, drop caches, mount. "
             "The others: remount + drop caches (a local cold read). Speed ratios: > 1 means "
             "decofs-remote is faster.")
    L.append("")
    key = "remote_cold_read"
    m = b.metrics[key]
    mine = median(b.values.get(key, {}).get(rn, []))
    L.append("| target | MiB/s | decofs-remote vs it |")
    L.append("|---|---:|---:|")
    for n in names:
        vs = b.values.get(key, {}).get(n)
        if not vs:
            err = b.errors.get(key, {}).get(n)
            L.append(f"| {n} | {'**error**: ' + esc(err) if err else '—'} | — |")
            continue
        cellv = fmt(median(vs), m["unit"])
        if len(vs) > 1:
            cellv += " (" + ", ".join(fmt(x, m["unit"]) for x in vs) + ")"
        ratio = times(speed_ratio(m, mine, median(vs))) if n != rn else ""
        L.append(f"| {n} | {cellv} | {ratio} |")
    L.append("")
    for e in info.get("evicted_read", []):
        L.append(f"- decofs-remote read: {e['local_blob_bytes_before'] / 1e6:,.1f} MB of blobs "
                 f"on disk before it (bound {e['cache_limit'] / 1e6:,.1f} MB, "
                 f"{e['evicted_before']} evicted by then), {e['fetched']} blobs fetched after")
    L.append("")
