"""sqlite: small durable transactions.

  sqlite_tx  the sqlite3 CLI runs BENCH_SQLITE_TX single-row INSERTs from a script, each its
             own transaction, default journal_mode=DELETE, PRAGMA synchronous=FULL;
             transactions per second over the wall-clock time of that sqlite3 run (the table
             is created before, the row count checked after, neither timed)
  sqlite_wal_tx  the same in journal_mode=WAL (synchronous=FULL: each commit fsyncs the
             write-ahead log; the -wal and -shm files live as long as the database is open)
Also the backing device's cache flushes per transaction (sqlite_flushes: a detail listed
under "Device I/O", not a workload).
"""

import os

from ..common import BenchError, env_int, log, run


def configure(cfg):
    cfg.sqlite_tx = env_int("BENCH_SQLITE_TX", 100 if cfg.quick else 1000)


def measure(b):
    c = b.cfg
    b.metric("sqlite_tx", f"sqlite3: {c.sqlite_tx:,} single-row INSERT transactions, "
             "journal_mode=DELETE, synchronous=FULL", "tx/s", True, "sqlite")
    b.metric("sqlite_wal_tx", f"sqlite3: {c.sqlite_tx:,} single-row INSERT transactions, "
             "journal_mode=WAL, synchronous=FULL", "tx/s", True, "sqlite")
    b.metric("sqlite_flushes", "device cache flushes per sqlite transaction", "flushes/tx",
             False, "io", table=False)
    script = os.path.join(c.work, "sqlite.sql")
    with open(script, "w") as f:
        f.write("PRAGMA synchronous=FULL;\n")
        for i in range(c.sqlite_tx):
            f.write(f"INSERT INTO t(id, v) VALUES({i}, randomblob(100));\n")

    def one(t, rep, mode, metric):
        log(f"{t.name}: sqlite {mode} rep {rep + 1}")
        db = os.path.join(t.fsdir, f"sqlite.{mode}.{rep}.db")
        run(["sqlite3", db, f"PRAGMA journal_mode={mode}; "
             "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"], timeout=60)
        io0 = b.io()
        dt, _, _ = run(["sqlite3", db], stdin=script, timeout=c.timeout)
        if mode == "DELETE":
            b.record_io("sqlite_flushes", t, io0, per=c.sqlite_tx, field=1)
        _, out, _ = run(["sqlite3", db, "SELECT count(*) FROM t;"], timeout=60)
        if int(out.strip()) != c.sqlite_tx:
            raise BenchError(f"sqlite holds {out.strip()} rows")
        b.record(metric, t, c.sqlite_tx / dt)
        for suffix in ("", "-journal", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)

    b.each_rep(["sqlite_tx"], lambda t, rep: one(t, rep, "DELETE", "sqlite_tx"))
    b.each_rep(["sqlite_wal_tx"], lambda t, rep: one(t, rep, "WAL", "sqlite_wal_tx"))
