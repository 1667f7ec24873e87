#!/usr/bin/env python3
"""Backstop's benchmark harness (issue 9): Backstop against restic, borg, rustic, tar | zstd and
cp -a on one realistic database mix, in one run, on one machine.

    python3 bench/run.py [--smoke] [--size 1GiB] [--out bench/out] [--backstop PATH]

It builds version 1 of a data set (a stopped PostgreSQL 15 cluster after `pgbench -i`, an SQLite
database, a RocksDB directory, incompressible and highly compressible files), lets every tool
take a full backup of it, applies a live-like workload (version 2), lets every tool take an
incremental backup, restores the latest backup of every tool and compares it byte for byte with
version 2, then compares Backstop's database sources with each database's own backup tool.
It writes report.md, report.json and a chart (chart.png with matplotlib, else chart.svg) to
--out. See bench/README.md for the method. Python 3 standard library only (matplotlib and
rocksdict are used when importable).
"""

import argparse
import datetime
import json
import mmap
import os
import platform
import random
import shlex
import shutil
import statistics
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "backstop-test"
PASSWORD = "bench-password"
MIB = 1024 * 1024
GIB = 1024 * MIB


class BenchError(Exception):
    """A failure that ends the run: a tool failed, or a restore differs from its source."""


# --------------------------------------------------------------------------------------------
# Running and measuring commands
# --------------------------------------------------------------------------------------------


class Measured:
    """Wall time, CPU time and peak RSS of one command (and the children it waited for)."""

    def __init__(self, wall, user, sys_, maxrss_kib, rc, stdout, stderr):
        self.wall = wall
        self.user = user
        self.sys = sys_
        self.maxrss_kib = maxrss_kib
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    @property
    def cpu(self):
        return self.user + self.sys


GNU_TIME = "/usr/bin/time"


class Runner:
    """Runs commands with their output in log files, and measures each one on its own.

    CPU time and peak RSS come from GNU time (`-f '%U %S %M'`), which forks the command from a
    small process: measured from this Python process instead (wait4), a child's peak RSS would
    include the harness's own memory, which the kernel counts until exec. For a shell pipeline
    the peak RSS is that of its largest member. Wall time is measured here.
    """

    def __init__(self, logdir, timeout):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.counter = 0
        self.gnu_time = os.access(GNU_TIME, os.X_OK)

    def run(self, name, argv, cwd=None, env=None, check=True, stdin_data=None, timeout=None):
        self.counter += 1
        stem = f"{self.counter:03d}-{name}".replace("/", "_").replace(" ", "_")
        out_path = self.logdir / f"{stem}.out"
        err_path = self.logdir / f"{stem}.err"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        limit = timeout or self.timeout
        time_path = self.logdir / f"{stem}.time"
        argv = [str(a) for a in argv]
        (self.logdir / f"{stem}.cmd").write_text(shlex.join(argv) + "\n")
        if self.gnu_time:
            argv = [GNU_TIME, "-f", "%U %S %M", "-o", str(time_path), "--"] + argv
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=full_env,
                stdout=out,
                stderr=err,
                stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                start_new_session=True,
            )
            timed_out = []

            def kill():
                timed_out.append(True)
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass

            timer = threading.Timer(limit, kill)
            timer.start()
            try:
                if stdin_data is not None:
                    proc.stdin.write(stdin_data)
                    proc.stdin.close()
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            wall = time.monotonic() - start
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc  # wait4 reaped it; tell Popen so it does not wait again
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        if timed_out:
            raise BenchError(f"{name}: timed out after {limit:.0f} s: {' '.join(argv)}")
        user, sys_, maxrss = usage.ru_utime, usage.ru_stime, usage.ru_maxrss
        if self.gnu_time and time_path.exists():
            # The last line: GNU time puts "Command exited with non-zero status N" before it.
            lines = time_path.read_text().strip().splitlines()
            fields = lines[-1].split() if lines else []
            if len(fields) == 3:
                user, sys_, maxrss = float(fields[0]), float(fields[1]), int(fields[2])
            elif rc == 0:
                # GNU time could not write its line (a full disk, say): say so, with the step.
                free = shutil.disk_usage(time_path.parent).free
                raise BenchError(
                    f"{name}: GNU time wrote no measurement to {time_path} "
                    f"({free / 2**30:.1f} GiB free there): {' '.join(map(str, argv))}"
                )
        if check and rc != 0:
            raise BenchError(
                f"{name}: exit code {rc}: {' '.join(map(str, argv))}\n"
                f"--- stderr ({err_path}):\n{stderr[-3000:]}\n--- stdout:\n{stdout[-1500:]}"
            )
        return Measured(wall, user, sys_, maxrss, rc, stdout, stderr)


START = time.monotonic()


def progress(msg, end="\n"):
    print(f"[{time.monotonic() - START:7.1f} s] {msg}", end=end, file=sys.stderr, flush=True)


def as_db_user(argv):
    """PostgreSQL refuses to run as root: drop to the test user (scripts/install/postgres.sh)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--"] + [str(a) for a in argv]
    return [str(a) for a in argv]


# --------------------------------------------------------------------------------------------
# File-tree helpers
# --------------------------------------------------------------------------------------------


def tree_bytes(path):
    """Apparent size of every regular file under path (what `du -sb` counts for files)."""
    total = 0
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def prefault(size):
    """Touches `size` bytes of anonymous memory, capped at what the machine has available less
    1 GiB, and frees them. The guest reports a free page to its host only once it has stayed
    free for a while (2 s in Linux's page_reporting; this Firecracker guest's `min_free_ms` says
    510 ms), so the next step's writes get these pages back while the host still backs them."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return
    size = min(size, avail - (1 << 30)) & ~0xFFF
    if size <= 0:
        return
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        for at in range(0, size, 4096):
            m[at] = 1
    finally:
        m.close()


def read_tree(path):
    """Reads every file once, untimed, so the next timed step finds the page cache warm."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                if not stat.S_ISREG(os.lstat(full).st_mode):
                    continue
                with open(full, "rb") as f:
                    while f.read(4 * MIB):
                        pass
            except (FileNotFoundError, PermissionError):
                continue


def walk_entries(root):
    """Relative path -> (kind, payload) for every entry below root (not root itself)."""
    entries = {}
    root = str(root)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", None)
            elif stat.S_ISREG(st.st_mode):
                entries[rel] = ("file", st.st_size)
            else:
                entries[rel] = ("special", None)
    return entries


def files_equal(a, b):
    """Offset of the first difference, or None when the two files are identical."""
    offset = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ba = fa.read(4 * MIB)
            bb = fb.read(4 * MIB)
            if ba != bb:
                for i in range(min(len(ba), len(bb))):
                    if ba[i] != bb[i]:
                        return offset + i
                return offset + min(len(ba), len(bb))
            if not ba:
                return None
            offset += len(ba)


def compare_trees(source, restored):
    """Every difference between two trees: missing, extra, kind, content, symlink target.

    Sockets and fifos are left out on both sides (no tool restores them as such). Ownership,
    modes and mtimes are not compared here: restore fidelity is the engine tests' job; this
    checks that every byte came back.
    """
    problems = []
    src = {k: v for k, v in walk_entries(source).items() if v[0] != "special"}
    dst = {k: v for k, v in walk_entries(restored).items() if v[0] != "special"}
    for rel in sorted(src.keys() - dst.keys()):
        problems.append(f"missing: {rel}")
    for rel in sorted(dst.keys() - src.keys()):
        problems.append(f"extra: {rel}")
    for rel in sorted(src.keys() & dst.keys()):
        (kind_s, val_s), (kind_d, val_d) = src[rel], dst[rel]
        if kind_s != kind_d:
            problems.append(f"kind differs: {rel}: {kind_s} vs {kind_d}")
        elif kind_s == "symlink" and val_s != val_d:
            problems.append(f"symlink target differs: {rel}: {val_s} vs {val_d}")
        elif kind_s == "file":
            if val_s != val_d:
                problems.append(f"size differs: {rel}: {val_s} vs {val_d} bytes")
            else:
                at = files_equal(os.path.join(source, rel), os.path.join(restored, rel))
                if at is not None:
                    problems.append(f"content differs: {rel} at byte {at}")
    return problems


def page_diff(v1, v2, logdir):
    """The incremental lower bound: bytes of 4 KiB and 8 KiB pages that differ between v1 and
    v2, per top-level part, plus the zstd -3 size of the changed 4 KiB pages.

    Pages are compared at the same offset of the same relative path; a file new in v2 counts
    whole, a file gone from v2 counts nothing, a trailing partial page counts its length.
    """
    page_sizes = (4096, 8192)
    parts = {}
    zstd = shutil.which("zstd")
    zout = Path(logdir) / "changed-pages.zst"
    zproc = None
    if zstd:
        zproc = subprocess.Popen(
            [zstd, "-3", "-T1", "-q", "-c"], stdin=subprocess.PIPE, stdout=open(zout, "wb")
        )
    for dirpath, _, files in os.walk(v2):
        for name in files:
            full2 = os.path.join(dirpath, name)
            rel = os.path.relpath(full2, v2)
            if not stat.S_ISREG(os.lstat(full2).st_mode):
                continue
            part = rel.split(os.sep)[0]
            acc = parts.setdefault(part, {"size": 0, "files": 0, 4096: 0, 8192: 0})
            acc["files"] += 1
            full1 = os.path.join(v1, rel)
            old = open(full1, "rb") if os.path.isfile(full1) else None
            with open(full2, "rb") as f2:
                while True:
                    block2 = f2.read(MIB)
                    if not block2:
                        break
                    acc["size"] += len(block2)
                    block1 = old.read(MIB) if old else b""
                    if block1 == block2:
                        continue
                    for ps in page_sizes:
                        for off in range(0, len(block2), ps):
                            if block2[off : off + ps] != block1[off : off + ps]:
                                acc[ps] += len(block2[off : off + ps])
                                if ps == 4096 and zproc:
                                    zproc.stdin.write(block2[off : off + ps])
            if old:
                old.close()
    compressed = None
    if zproc:
        zproc.stdin.close()
        zproc.wait()
        compressed = zout.stat().st_size
        zout.unlink()
    total = {"size": 0, "files": 0, 4096: 0, 8192: 0}
    for acc in parts.values():
        for key in total:
            total[key] += acc[key]
    return {
        "parts": {
            p: {"size": a["size"], "files": a["files"], "pages4k": a[4096], "pages8k": a[8192]}
            for p, a in sorted(parts.items())
        },
        "total": {
            "size": total["size"],
            "files": total["files"],
            "pages4k": total[4096],
            "pages8k": total[8192],
            "pages4k_zstd3": compressed,
        },
    }


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------


class Dataset:
    """Builds version 1 of the mix under `root`, and turns it into version 2 with a workload.

    PostgreSQL runs only while the data are built and the workload runs: every backup in the
    main comparison is of a stopped cluster's files (the database-native comparison at the end
    backs up the running server).
    """

    def __init__(self, work, root, size, smoke, runner, notes, strict):
        self.work = Path(work)
        self.root = Path(root)
        self.size = size
        self.smoke = smoke
        self.runner = runner
        self.notes = notes
        self.strict = strict
        self.rng = random.Random(20240901)
        self.pg_dir = self.root / "pg"
        self.pg_sock = self.work / "pgsock"
        self.pg_log = self.work / "pg.log"
        self.pg_port = 5432
        self.pg_scale = None
        self.parts = []
        self.sqlite_path = self.root / "sqlite" / "bench.db"
        self.sqlite_rows = 0
        self.rocks_dir = self.root / "rocksdb"
        self.rocks_keys = 0
        self.rocks_next = 0

    def skip(self, what, why):
        msg = f"{what} skipped: {why}"
        if self.strict:
            raise BenchError(msg + " (--strict: install it with scripts/install-test-deps.sh)")
        self.notes.append(msg)
        print("NOTE: " + msg, file=sys.stderr)

    # -- version 1 -----------------------------------------------------------------------------

    def build(self):
        self.root.mkdir(parents=True)
        os.chmod(self.work, 0o755)
        os.chmod(self.root, 0o755)
        self.build_files()
        self.build_sqlite()
        self.build_rocksdb()
        self.build_postgres()

    def build_files(self):
        files = self.root / "files"
        files.mkdir()
        # Incompressible: random bytes, in one large and a few small files.
        random_total = int(self.size * 0.10)
        with open(files / "random.bin", "wb") as f:
            left = random_total * 3 // 4
            while left > 0:
                f.write(os.urandom(min(left, 4 * MIB)))
                left -= 4 * MIB
        for i in range(4):
            (files / f"blob{i}.bin").write_bytes(os.urandom(random_total // 16))
        # Highly compressible: application logs.
        logs = files / "logs"
        logs.mkdir()
        per_file = int(self.size * 0.10) // 4
        for i in range(4):
            self.write_log(logs / f"app{i}.log", per_file, i * 10_000_000)
        self.parts.append("files")

    def write_log(self, path, size, seq, mode="wb"):
        paths = ["/api/v1/orders", "/api/v1/users", "/healthz", "/api/v1/search", "/login"]
        levels = ["INFO", "INFO", "INFO", "WARN", "DEBUG"]
        rng = self.rng
        written = 0
        base = datetime.datetime(2024, 9, 1)
        with open(path, mode) as f:
            while written < size:
                lines = []
                for _ in range(1000):
                    seq += 1
                    ts = base + datetime.timedelta(milliseconds=seq * 7)
                    lines.append(
                        f"{ts.isoformat()}Z {rng.choice(levels)} request id={seq} "
                        f"path={rng.choice(paths)}/{rng.randrange(100000)} status=200 "
                        f"ms={rng.randrange(500)} user=u{rng.randrange(5000)}\n"
                    )
                chunk = "".join(lines).encode()
                f.write(chunk)
                written += len(chunk)

    def build_sqlite(self):
        self.sqlite_path.parent.mkdir()
        # About 85 bytes per row with its index, measured on this schema.
        self.sqlite_rows = max(5000, int(self.size * 0.25 / 85))
        con = sqlite3.connect(self.sqlite_path)
        con.executescript("""
            PRAGMA journal_mode=WAL;
            CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER NOT NULL,
                                amount INTEGER NOT NULL, status TEXT NOT NULL, note TEXT);
            CREATE INDEX orders_customer ON orders(customer);
            """)
        rng = self.rng
        statuses = ["new", "paid", "shipped", "delivered", "returned"]

        def rows(start, count):
            for i in range(start, start + count):
                yield (
                    i,
                    rng.randrange(100_000),
                    rng.randrange(1, 100_000),
                    rng.choice(statuses),
                    rng.randbytes(8).hex(),
                )

        con.executemany("INSERT INTO orders VALUES (?,?,?,?,?)", rows(1, self.sqlite_rows))
        con.commit()
        con.close()  # the last connection checkpoints and removes the WAL
        self.parts.append("sqlite")

    def build_rocksdb(self):
        try:
            import rocksdict  # noqa: F401  (scripts/install/rocksdb.sh)
        except ImportError:
            self.skip("RocksDB part", "the Python module rocksdict is not installed")
            return
        self.rocks_keys = max(2000, int(self.size * 0.15 / 230))
        self.rocks_write(0, self.rocks_keys, flush=True)
        self.rocks_next = self.rocks_keys
        self.parts.append("rocksdb")

    def rocks_write(self, first, count, flush):
        import rocksdict

        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        # format_version 5: Debian's ldb (RocksDB 7.8), the native peer, cannot read 6.
        table = rocksdict.BlockBasedOptions()
        table.set_format_version(5)
        opts.set_block_based_table_factory(table)
        db = rocksdict.Rdict(str(self.rocks_dir), opts)
        rng = self.rng
        filler = b"status=active;region=eu-west;plan=standard;" * 2
        batch = rocksdict.WriteBatch(raw_mode=True)
        for n, i in enumerate(range(first, first + count)):
            key = b"user:%012d" % i
            batch.put(key, rng.randbytes(100) + filler)
            if n % 10_000 == 9_999:
                db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        db.write(batch)
        if flush:
            db.flush()
        db.close()

    def pg_available(self):
        if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pgbench").exists():
            return "PostgreSQL 15 is not installed (scripts/install/postgres.sh)"
        if os.geteuid() == 0:
            try:
                subprocess.run(["id", "-u", PG_USER], check=True, capture_output=True)
            except subprocess.CalledProcessError:
                return f"user {PG_USER} is missing (scripts/install/postgres.sh)"
        return None

    def pg_conninfo(self):
        return f"host={self.pg_sock} port={self.pg_port} user={PG_USER} dbname=postgres"

    def pg_client_args(self):
        return ["-h", str(self.pg_sock), "-p", str(self.pg_port), "-U", PG_USER]

    def build_postgres(self):
        why = self.pg_available()
        if why:
            self.skip("PostgreSQL part", why)
            return
        user = PG_USER if os.geteuid() == 0 else None
        self.pg_sock.mkdir()
        self.pg_dir.mkdir()
        self.pg_log.touch()
        for p in (self.pg_sock, self.pg_dir, self.pg_log):
            if user:
                shutil.chown(p, user, user)
        os.chmod(self.pg_dir, 0o700)
        initdb = [PG_BIN / "initdb", "-D", self.pg_dir, "-U", PG_USER, "--no-sync"]
        if self.smoke:
            initdb.append("--wal-segsize=1")  # 1 MiB WAL segments keep the smoke cluster small
        self.runner.run("pg-initdb", as_db_user(initdb))
        with open(self.pg_dir / "postgresql.conf", "a") as f:
            f.write(
                "\n# bench/run.py\nlisten_addresses = ''\nfsync = on\n"
                + ("max_wal_size = 4MB\nmin_wal_size = 2MB\n" if self.smoke else "max_wal_size = 512MB\n")
            )
        self.pg_start()
        try:
            # pgbench scale 1 is ~15 MiB of tables and indexes.
            self.pg_scale = 1 if self.smoke else max(1, round(self.size * 0.33 / (15.6 * MIB)))
            self.runner.run(
                "pgbench-init",
                [PG_BIN / "pgbench", "-i", "-q", "-s", str(self.pg_scale)]
                + self.pg_client_args()
                + ["postgres"],
            )
            self.pg_sql("CHECKPOINT")
        finally:
            self.pg_stop()
        self.parts.append("pg")

    def pg_start(self):
        self.runner.run(
            "pg-start",
            as_db_user(
                [
                    PG_BIN / "pg_ctl",
                    "-D",
                    self.pg_dir,
                    "-l",
                    self.pg_log,
                    "-w",
                    "-t",
                    "120",
                    "-o",
                    f"-p {self.pg_port} -k {self.pg_sock}",
                    "start",
                ]
            ),
        )

    def pg_stop(self):
        self.runner.run(
            "pg-stop",
            as_db_user([PG_BIN / "pg_ctl", "-D", self.pg_dir, "-m", "fast", "-w", "stop"]),
            check=False,
        )

    def pg_sql(self, sql):
        return self.runner.run(
            "psql",
            [PG_BIN / "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
            + self.pg_client_args()
            + ["-d", "postgres", "-c", sql],
        ).stdout.strip()

    # -- version 2 -----------------------------------------------------------------------------

    def workload(self):
        """A live-like burst of writes: the second version of every part."""
        if "pg" in self.parts:
            self.pg_start()
            try:
                self.pg_workload()
            finally:
                self.pg_stop()
        if "sqlite" in self.parts:
            self.sqlite_workload()
        if "rocksdb" in self.parts:
            self.rocks_workload()
        if "files" in self.parts:
            logs = self.root / "files" / "logs"
            self.write_log(logs / "app3.log", max(4096, int(self.size * 0.005)), 99_000_000, mode="ab")
            self.write_log(logs / "app4.log", max(4096, int(self.size * 0.002)), 98_000_000)

    def pg_workload(self):
        """pgbench transactions (~200 per scale unit: a few % of pgbench_accounts' pages), then a
        checkpoint so the changed pages reach the data files. The server must be running."""
        per_client = max(100, self.pg_scale * 100)
        self.runner.run(
            "pgbench-run",
            [PG_BIN / "pgbench", "-n", "-c", "2", "-j", "2", "-t", str(per_client)]
            + self.pg_client_args()
            + ["postgres"],
        )
        self.pg_sql("CHECKPOINT")

    def sqlite_workload(self):
        """Updates 0.2 % of the rows at random and appends 1 %."""
        rng = self.rng
        con = sqlite3.connect(self.sqlite_path)
        (rows,) = con.execute("SELECT max(id) FROM orders").fetchone()
        for _ in range(max(50, rows // 500)):
            con.execute(
                "UPDATE orders SET amount = amount + 1, status = 'paid' WHERE id = ?",
                (rng.randrange(1, rows + 1),),
            )
        con.executemany(
            "INSERT INTO orders VALUES (?,?,?,?,?)",
            (
                (i, rng.randrange(100_000), rng.randrange(1, 100_000), "new", rng.randbytes(8).hex())
                for i in range(rows + 1, rows + 1 + max(50, rows // 100))
            ),
        )
        con.commit()
        con.close()

    def rocks_workload(self):
        """5 % new keys, closed without a flush (so they are in the WAL, which the next open
        replays into a new SST), then overwrites of 2 % of the existing keys, flushed."""
        new = max(100, self.rocks_keys // 20)
        self.rocks_write(self.rocks_next, new, flush=False)
        self.rocks_next += new
        overwrite = max(50, self.rocks_keys // 50)
        self.rocks_write(self.rng.randrange(self.rocks_keys - overwrite), overwrite, flush=True)


# --------------------------------------------------------------------------------------------
# The tools
# --------------------------------------------------------------------------------------------


class Tool:
    """One backup program: full backup, incremental backup, restore of the latest."""

    name = "tool"
    dedup_peer = False  # a deduplicating backup program (the "peers" of the targets)

    def __init__(self, work):
        self.work = Path(work)
        self.repo = self.work / "repos" / self.name
        self.cache = self.work / "cache" / self.name

    def version(self):
        return ""

    def setup(self, runner):
        self.repo.parent.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)

    def backup_cmd(self, step, data):
        raise NotImplementedError

    def restore_cmd(self, target, sync=True):
        raise NotImplementedError

    def prune_cmd(self):
        """Deletes the full backup, keeping the incremental, and gives back the space only the
        full used; None where the tool cannot (a tar incremental needs its full)."""
        return None

    def check_cmd(self):
        """Reads back every byte of the repository and checks it against the tool's own
        checksums; None where the tool has no such check."""
        return None

    def restore_over_cmd(self, target):
        """Restores the latest backup over an earlier copy of the data in `target`: what the
        backup does not have deleted, and every file there checked by its content, not trusted
        by its size and time; None where the tool cannot."""
        return None

    def over_root(self, target):
        """Where the tool's restore puts the tree under `target` (see `restored_root`)."""
        return target / "data"

    @property
    def copy_repo(self):
        """The second repository the `copy` step copies into."""
        return self.work / "copies" / self.name

    def copy_setup_cmds(self):
        """Untimed commands that create `copy_repo` ready to take this repository's backups."""
        return []

    def copy_cmd(self):
        """Copies every backup of the repository into `copy_repo`; None where the tool cannot."""
        return None

    def copy_list_cmd(self):
        """Lists the backups of `copy_repo` as JSON (see `count_backups`)."""
        return None

    def env(self):
        return {}

    def cwd(self):
        return self.work

    def reported(self, measured):
        return {}


def first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


class Backstop(Tool):
    dedup_peer = False

    def __init__(self, work, binary, name="backstop", extra=()):
        self.name = name
        super().__init__(work)
        self.binary = str(binary)
        # `--no-encryption` is a flag of `init` only; everything else goes to every command.
        self.init_extra = [f for f in extra if f == "--no-encryption"]
        self.extra = [f for f in extra if f != "--no-encryption"]

    def version(self):
        flags = " ".join(self.init_extra + self.extra)
        return first_line([self.binary, "--version"]) + (f" ({flags})" if flags else "")

    def env(self):
        return {
            "BACKSTOP_PASSWORD": PASSWORD,
            "BACKSTOP_FROM_PASSWORD": PASSWORD,
            "XDG_CACHE_HOME": str(self.cache),
            "XDG_CONFIG_HOME": str(self.cache),
        }

    def base(self):
        return [self.binary, "--repo", str(self.repo)] + self.extra

    def setup(self, runner):
        super().setup(runner)
        runner.run(f"{self.name}-init", self.base() + ["-q", "init"] + self.init_extra, env=self.env())

    def backup_cmd(self, step, data):
        return self.base() + ["-q", "--json", "backup", str(data)]

    def restore_cmd(self, target, sync=True):
        # Backstop flushes a restore to disk itself unless told not to.
        return self.base() + ["-q", "restore", "latest", str(target)] + ([] if sync else ["--no-sync"])

    def prune_cmd(self):
        # Backup 1 is the full (every repetition starts from a fresh repository); no reader is
        # running, so the rewritten packs may go at once.
        base = " ".join(shlex.quote(a) for a in self.base())
        return ["bash", "-c", f"{base} -q delete 1 && {base} -q gc --grace 0s"]

    def check_cmd(self):
        return self.base() + ["-q", "verify", "--full"]

    def restore_over_cmd(self, target):
        return self.base() + ["-q", "restore", "--delta", "latest", str(target)]

    def copy_base(self):
        return [self.binary, "--repo", str(self.copy_repo)] + self.extra

    def copy_setup_cmds(self):
        return [self.copy_base() + ["-q", "init", "--from-repo", str(self.repo)]]

    def copy_cmd(self):
        return self.copy_base() + ["-q", "copy", "--from-repo", str(self.repo)]

    def copy_list_cmd(self):
        return self.copy_base() + ["--json", "list"]

    def over_root(self, target):
        return target

    def reported(self, measured):
        try:
            result = json.loads(measured.stdout)["result"]
            return {"bytes_added": result.get("bytes_added"), "bytes_read": result.get("bytes_read")}
        except (ValueError, KeyError, TypeError):
            return {}


class Restic(Tool):
    name = "restic"
    dedup_peer = True

    def version(self):
        return first_line(["restic", "version"])

    def env(self):
        return {"RESTIC_PASSWORD": PASSWORD, "RESTIC_FROM_PASSWORD": PASSWORD}

    def base(self):
        return ["restic", "--repo", str(self.repo), "--cache-dir", str(self.cache), "-q"]

    def setup(self, runner):
        super().setup(runner)
        runner.run("restic-init", self.base() + ["init"], env=self.env())

    def backup_cmd(self, step, data):
        return self.base() + ["backup", data.name]

    def restore_cmd(self, target, sync=True):
        return self.base() + ["restore", "latest", "--target", str(target)]

    def prune_cmd(self):
        return self.base() + ["forget", "--keep-last", "1", "--prune"]

    def check_cmd(self):
        return self.base() + ["check", "--read-data"]

    def copy_base(self):
        return ["restic", "--repo", str(self.copy_repo), "--cache-dir", str(self.cache), "-q"]

    def copy_setup_cmds(self):
        # The same chunker parameters, or the copy could not share chunks with later backups.
        return [self.copy_base() + ["init", "--from-repo", str(self.repo), "--copy-chunker-params"]]

    def copy_cmd(self):
        return self.copy_base() + ["copy", "--from-repo", str(self.repo)]

    def copy_list_cmd(self):
        return self.copy_base() + ["snapshots", "--json"]


class Rustic(Tool):
    name = "rustic"
    dedup_peer = True

    def version(self):
        return first_line(["rustic", "--version"])

    def env(self):
        return {"RUSTIC_PASSWORD": PASSWORD}

    def base(self):
        return ["rustic", "--repository", str(self.repo), "--cache-dir", str(self.cache)]

    def setup(self, runner):
        super().setup(runner)
        runner.run("rustic-init", self.base() + ["init"], env=self.env())

    def backup_cmd(self, step, data):
        return self.base() + ["backup", data.name]

    def restore_cmd(self, target, sync=True):
        return self.base() + ["restore", "latest", str(target)]

    def prune_cmd(self):
        return self.base() + ["forget", "--keep-last", "1", "--prune"]

    def check_cmd(self):
        return self.base() + ["check", "--read-data"]

    def restore_over_cmd(self, target):
        # Without --verify-existing rustic trusts a file whose size and mtime match.
        return self.base() + ["restore", "--delete", "--verify-existing", "latest", str(target)]

    # rustic names its copy targets by configuration profile: `rustic-copy.toml` in its working
    # directory (the work directory).
    COPY_PROFILE = "rustic-copy"

    def copy_setup_cmds(self):
        profile = self.work / f"{self.COPY_PROFILE}.toml"
        profile.write_text(
            f'[repository]\nrepository = "{self.copy_repo}"\npassword = "{PASSWORD}"\n'
        )
        # `--init` creates the target with this repository's chunker parameters (rustic refuses
        # to copy into one with others); a filter that matches nothing keeps it untimed and empty.
        return [
            self.base()
            + ["copy", "--init", "--target", self.COPY_PROFILE, "--filter-host", "no-such-host"]
        ]

    def copy_cmd(self):
        return self.base() + ["copy", "--target", self.COPY_PROFILE]

    def copy_list_cmd(self):
        return ["rustic", "--repository", str(self.copy_repo), "snapshots", "--json"]


class Borg(Tool):
    name = "borg"
    dedup_peer = True

    def version(self):
        return first_line(["borg", "--version"])

    def env(self):
        return {
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.cache),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def setup(self, runner):
        super().setup(runner)
        runner.run("borg-init", ["borg", "init", "--encryption", "repokey", str(self.repo)], env=self.env())

    def backup_cmd(self, step, data):
        # zstd level 3, as Backstop's default and the tar pipeline (borg's default is lz4).
        return ["borg", "create", "--compression", "zstd,3", f"{self.repo}::{step}", data.name]

    def restore_cmd(self, target, sync=True):
        return ["bash", "-c", f'cd "{target}" && borg extract "{self.repo}::incremental"']

    def prune_cmd(self):
        # borg 1.2 frees segment space only in `compact`.
        return ["bash", "-c", f'borg delete "{self.repo}::full" && borg compact "{self.repo}"']

    def check_cmd(self):
        # --verify-data decrypts every chunk and checks its id (borg's --repository-only
        # would check only the segment CRCs).
        return ["borg", "check", "--verify-data", str(self.repo)]


class TarZstd(Tool):
    """GNU tar's --listed-incremental (changed files are stored whole) through zstd -T0 -3."""

    name = "tar+zstd"

    def version(self):
        return first_line(["tar", "--version"]) + "; " + first_line(["zstd", "--version"])

    def backup_cmd(self, step, data):
        self.repo.mkdir(exist_ok=True)
        return [
            "bash",
            "-c",
            f'set -o pipefail; tar -C "{data.parent}" --listed-incremental="{self.repo}/snar" '
            f'-cf - "{data.name}" | zstd -T0 -3 -q -o "{self.repo}/{step}.tar.zst"',
        ]

    def restore_cmd(self, target, sync=True):
        one = (
            'set -o pipefail; zstd -dc "{r}/{s}.tar.zst" | tar -C "{t}" --listed-incremental=/dev/null -xf -'
        )
        return [
            "bash",
            "-c",
            " && ".join(one.format(r=self.repo, s=s, t=target) for s in ("full", "incremental")),
        ]

    def check_cmd(self):
        # zstd's frame checksums (xxh64 of the content), the most a tar archive offers.
        return ["zstd", "-tq", str(self.repo / "full.tar.zst"), str(self.repo / "incremental.tar.zst")]


class CopyAll(Tool):
    """`cp -a`, the copy limit: every backup is a full copy, a restore copies it back."""

    name = "cp-a"

    def version(self):
        return first_line(["cp", "--version"])

    def backup_cmd(self, step, data):
        self.repo.mkdir(exist_ok=True)
        # A real copy: GNU cp 9 clones (reflinks) by default where the filesystem can.
        return ["cp", "-a", "--reflink=never", str(data), str(self.repo / step)]

    def restore_cmd(self, target, sync=True):
        return ["cp", "-a", "--reflink=never", str(self.repo / "incremental"), str(Path(target) / "data")]

    def prune_cmd(self):
        return ["rm", "-rf", str(self.repo / "full")]


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def parse_size(text):
    units = {
        "": 1,
        "k": 1024,
        "kib": 1024,
        "m": MIB,
        "mib": MIB,
        "g": GIB,
        "gib": GIB,
        "kb": 1000,
        "mb": 10**6,
        "gb": 10**9,
    }
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num) :]
    if unit not in units:
        raise argparse.ArgumentTypeError(f"unknown size unit in {text!r} (use e.g. 1GiB, 512MiB)")
    return int(float(num) * units[unit])


def find_backstop(args):
    if args.backstop:
        return Path(args.backstop).resolve()
    if os.environ.get("BACKSTOP_BIN"):
        return Path(os.environ["BACKSTOP_BIN"]).resolve()
    print("building backstop: cargo build --release -p backstop-cli", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-p", "backstop-cli"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "release" / "backstop"


def count_backups(listing):
    """The number of backups in a JSON listing: Backstop's `{"result": [...]}`, restic's list,
    or rustic's list of groups, each with its `snapshots`."""
    value = json.loads(listing)
    if isinstance(value, dict):
        value = value.get("result", [])
    if value and isinstance(value[0], dict) and "snapshots" in value[0]:
        return sum(len(group["snapshots"]) for group in value)
    return len(value)


def restored_root(target):
    """Where a tool put the tree: restic, borg, rustic, tar and cp restore `data/` under the
    target (they store the relative path given); Backstop restores the tree's contents."""
    entries = os.listdir(target)
    if entries == ["data"] and os.path.isdir(os.path.join(target, "data")):
        return Path(target) / "data"
    return Path(target)


# The restore steps: "restore" is timed until the files are on disk (the tool's restore, then
# `sync`); "restore-nosync" until the tool exits, with Backstop's own flush turned off.
RESTORE_STEPS = ("restore", "restore-nosync")
STEPS = ("full", "incremental") + RESTORE_STEPS


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.caches_dropped = False
        # A guest that reports free pages to its host (Firecracker and other VMs with
        # `page_reporting`) gives the memory `drop_caches` frees back; whoever touches it next
        # waits for the host to fault it in again. `cp -a` restoring 1 GiB right after a drop
        # took 0.55 to 3.0 s (2.9 s of system time in its copy) instead of 0.37 to 0.44 s with
        # the memory touched beforehand, so `prepare` touches it (`prefault`).
        self.page_reporting = Path("/sys/module/page_reporting").exists()
        self.prefault_bytes = 0
        # How many prefaults ran, before the timed steps and before the native comparison's
        # backups: the report describes what was done, not what the conditions imply.
        self.prefaults = {"steps": 0, "native": 0}
        self.prefault_counter = "steps"
        self.size = args.size or (4 * MIB if args.smoke else GIB)
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        base = Path(args.work) if args.work else Path("/var/tmp")
        base.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="backstop-bench-", dir=base))
        self.data = self.work / "data"
        self.v1 = self.work / "v1"
        timeout = 300 if self.smoke else 3600
        self.runner = Runner(self.out / "logs", timeout)
        self.notes = []
        self.results = []  # one dict per (tool, step): its median run
        self.runs = {}  # (tool, step) -> every run's dict, in order
        self.native = []
        self.history = None
        self.failures = []
        self.loads = [("start", os.getloadavg())]
        self.dataset = Dataset(
            self.work, self.data, self.size, self.smoke, self.runner, self.notes, args.strict
        )

    def note(self, msg):
        self.notes.append(msg)
        print("NOTE: " + msg, file=sys.stderr)

    def tools(self, backstop_bin):
        tools = [Backstop(self.work, backstop_bin)]
        for spec in self.args.variant:
            label, _, flags = spec.partition("=")
            tools.append(Backstop(self.work, backstop_bin, name=f"backstop[{label}]", extra=flags.split()))
        optional = {"restic": Restic, "borg": Borg, "rustic": Rustic}
        for name, cls in optional.items():
            if self.args.only is not None and name not in self.args.only:
                continue
            if shutil.which(name):
                tools.append(cls(self.work))
            elif name == "rustic":
                self.note("rustic not installed (optional: scripts/optional/rustic.sh); left out")
            elif self.args.strict:
                raise BenchError(f"{name} is not installed (--strict): run scripts/install/bench.sh")
            else:
                self.note(f"{name} not installed (scripts/install/bench.sh); left out")
        if self.args.only is None or "tar+zstd" in self.args.only:
            if shutil.which("zstd"):
                tools.append(TarZstd(self.work))
            elif self.args.strict:
                raise BenchError("zstd is not installed (--strict): run scripts/install/bench.sh")
            else:
                self.note("zstd not installed; tar+zstd left out")
        if self.args.only is None or "cp-a" in self.args.only:
            tools.append(CopyAll(self.work))
        return tools

    def settle(self):
        """Writes back the previous step's dirty pages, so no tool pays for another's writes.
        Left out in smoke mode, where other builds' writes would make `sync` the slowest part."""
        if not self.smoke:
            os.sync()

    def prepare(self, warm):
        """Before a timed step: `sync`, then (as root, not in smoke mode) drop the clean page
        cache, then read `warm` once. Every tool then starts with its input in memory and the
        rest of memory free: with the page cache full from earlier steps, the kernel reclaims
        pages while a tool writes, which cost a Backstop restore ~0.5 s of system time and
        depended on what ran before. On a guest that reports free pages to its host, it then
        touches the freed memory again (`prefault`). Returns whether the cache was dropped."""
        self.settle()
        dropped = False
        if not self.smoke and os.geteuid() == 0:
            try:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("1\n")
                dropped = True
            except OSError:
                pass
        read_tree(warm)
        if dropped:
            self.touch_freed_memory()
        return dropped

    def touch_freed_memory(self):
        """On a guest that reports free pages to its host, touches memory of the size a step
        writes (`prefault`), so that the step does not wait for the host to back it again.
        Not in smoke mode, which never drops caches."""
        if self.page_reporting and not self.smoke:
            prefault(self.prefault_bytes)
            self.prefaults[self.prefault_counter] += 1

    def step(self, tool, step, data_bytes):
        """One measured step of one tool, preceded by an untimed warm-up and `sync`."""
        self.loads.append((f"{tool.name} {step}", os.getloadavg()))
        restore = step in RESTORE_STEPS or step == "over"
        if restore:
            target = self.work / "restore" / tool.name
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            argv = tool.restore_cmd(target, sync=step == "restore")
            if step == "over":
                # The earlier copy is version 1 as it was backed up (untimed).
                root = tool.over_root(target)
                source = f"{self.v1}/." if root == target else str(self.v1)
                subprocess.run(["cp", "-a", source, str(root)], check=True)
                argv = tool.restore_over_cmd(target)
        elif step == "copy":
            shutil.rmtree(tool.copy_repo, ignore_errors=True)
            tool.copy_repo.parent.mkdir(parents=True, exist_ok=True)
            for i, setup in enumerate(tool.copy_setup_cmds()):
                self.runner.run(f"{tool.name}-copy-setup{i}", setup, cwd=tool.cwd(), env=tool.env())
            argv = tool.copy_cmd()
        elif step == "prune":
            argv = tool.prune_cmd()
        elif step == "check":
            argv = tool.check_cmd()
        else:
            argv = tool.backup_cmd(step, self.data)
        on_repo = restore or step in ("prune", "check", "copy")
        self.caches_dropped = self.prepare(tool.repo if on_repo else self.data)
        before = tree_bytes(tool.repo) if tool.repo.exists() else 0
        progress(f"  {tool.name:<22} {step:<12}", end="")
        counters_before = cpu_counters()
        m = self.runner.run(f"{tool.name}-{step}", argv, cwd=tool.cwd(), env=tool.env())
        counters_after = cpu_counters()
        sync_s = None
        if step in ("restore", "over"):
            # A restore is done when it is on disk: every tool pays for writing its files back,
            # Backstop (which syncs itself) included. `sync` writes back nothing else, since
            # the step started after one.
            started = time.monotonic()
            os.sync()
            sync_s = time.monotonic() - started
            m.wall += sync_s
        after = tree_bytes(tool.repo)
        copied_backups = None
        if step == "copy":
            # What the copy holds, beside the repository it copied from: both backups.
            before, after = 0, tree_bytes(tool.copy_repo)
            listed = self.runner.run(
                f"{tool.name}-copy-list", tool.copy_list_cmd(), cwd=tool.cwd(), env=tool.env()
            )
            copied_backups = count_backups(listed.stdout)
            if copied_backups != 2:
                self.failures.append(f"{tool.name}: the copy holds {copied_backups} backups, not 2")
            shutil.rmtree(tool.copy_repo)
        row = {
            "tool": tool.name,
            "step": step,
            "wall_s": round(m.wall, 3),
            "user_s": round(m.user, 3),
            "sys_s": round(m.sys, 3),
            "cpu_s": round(m.cpu, 3),
            "peak_rss_mib": round(m.maxrss_kib / 1024, 1),
            "repo_bytes": after,
            "bytes_added": after - before if not restore else None,
            "sync_s": None if sync_s is None else round(sync_s, 3),
            "data_bytes": data_bytes,
            "mib_per_s": round(data_bytes / MIB / m.wall, 1) if m.wall > 0 and step not in ("prune", "check", "copy") else None,
        }
        if counters_before and counters_after:
            # The machine's busy time beyond the tool's own: other processes, and kernel threads
            # (writeback, reclaim) that the tool's own writes may have set working.
            busy = counters_after[0] - counters_before[0]
            row["other_cpu_s"] = round(max(0.0, busy - m.cpu), 2)
            row["steal_s"] = round(counters_after[1] - counters_before[1], 2)
        if copied_backups is not None:
            row["copied_backups"] = copied_backups
        row.update({f"reported_{k}": v for k, v in tool.reported(m).items()})
        if restore:
            problems = compare_trees(self.data, restored_root(target))
            row["verified"] = not problems
            if problems:
                self.failures.append(
                    f"{tool.name}: restore differs from version 2: "
                    + "; ".join(problems[:10])
                    + (f" … ({len(problems)} differences)" if len(problems) > 10 else "")
                )
            shutil.rmtree(target)
        row["run"] = len(self.runs.get((tool.name, step), [])) + 1
        print(
            f" {m.wall:8.2f} s wall {m.cpu:8.2f} s CPU {row['peak_rss_mib']:8.1f} MiB RSS"
            + (
                f" {'+' if row['bytes_added'] >= 0 else ''}{row['bytes_added'] / MIB:9.1f} MiB"
                if row["bytes_added"] is not None
                else ("  verified" if row.get("verified") else "  MISMATCH")
            ),
            file=sys.stderr,
        )
        self.runs.setdefault((tool.name, step), []).append(row)

    def phase(self, order, step, data_bytes, before_repeat=None):
        """Runs `step` for every tool, `--repeat` times, rotating who goes first between the
        rounds; `before_repeat(tool)` puts a tool's repository back before each round after the
        first. Keeps per tool the run with the median wall time (its other columns with it), the
        highest peak RSS of all runs, and every run's wall time."""
        for round_ in range(self.args.repeat):
            for t in order:
                if round_ > 0 and before_repeat:
                    before_repeat(t)
                self.step(t, step, data_bytes)
            order = order[1:] + order[:1]
        for t in sorted(order, key=lambda t: self.tool_names.index(t.name)):
            runs = self.runs[(t.name, step)]
            by_wall = sorted(runs, key=lambda r: r["wall_s"])
            row = dict(by_wall[(len(by_wall) - 1) // 2])
            row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
            row["wall_runs"] = [r["wall_s"] for r in runs]
            row["peak_rss_runs"] = [r["peak_rss_mib"] for r in runs]
            self.results.append(row)
        return order

    def reset(self, tool, saved=None):
        """Empties a tool's repository and cache (a fresh `init`), or puts back a saved copy."""
        for path in (tool.repo, tool.cache):
            shutil.rmtree(path, ignore_errors=True)
        if saved is None:
            tool.setup(self.runner)
            return
        for path in (tool.repo, tool.cache):
            copy = saved / path.parent.name / path.name
            if copy.exists():
                subprocess.run(["cp", "-a", "--reflink=never", str(copy), str(path)], check=True)

    def save(self, tools, saved):
        """Copies every tool's repository and cache under `saved`, for `reset`."""
        for t in tools:
            for path in (t.repo, t.cache):
                if path.exists():
                    (saved / path.parent.name).mkdir(parents=True, exist_ok=True)
                    subprocess.run(
                        ["cp", "-a", "--reflink=never", str(path), str(saved / path.parent.name / path.name)],
                        check=True,
                    )

    def run(self):
        backstop_bin = find_backstop(self.args)
        if not self.runner.gnu_time:
            self.note(
                f"{GNU_TIME} is missing (scripts/install/bench.sh): peak RSS is measured with wait4() "
                "and includes the harness's own memory"
            )
        if not Path(backstop_bin).is_file():
            raise BenchError(f"no backstop binary at {backstop_bin} (build it, or pass --backstop)")
        progress(f"work directory: {self.work}")
        started = time.monotonic()
        progress(f"building version 1 ({self.size / MIB:.0f} MiB target)")
        self.dataset.build()
        v1_bytes = tree_bytes(self.data)
        # What a step writes at most: a restore or a `cp -a` of the data, and the tool's memory.
        self.prefault_bytes = v1_bytes + (512 << 20)
        part_sizes_v1 = {p.name: tree_bytes(p) for p in sorted(self.data.iterdir())}
        # Version 1 is kept aside only to count the pages the workload changed.
        subprocess.run(["cp", "-a", str(self.data), str(self.v1)], check=True)

        tools = self.tools(backstop_bin)
        self.versions = {t.name: t.version() for t in tools}
        for t in tools:
            t.setup(self.runner)
        order = list(tools)
        self.tool_names = [t.name for t in tools]

        progress("full backups of version 1")
        order = self.phase(order, "full", v1_bytes, before_repeat=self.reset)
        order = order[1:] + order[:1]  # alternate who goes first
        saved = self.work / "after-full"
        if self.args.repeat > 1:
            # Every repetition of the incremental starts from the repository the full left.
            self.save(tools, saved)

        progress("workload (version 2)")
        self.dataset.workload()
        v2_bytes = tree_bytes(self.data)
        part_sizes_v2 = {p.name: tree_bytes(p) for p in sorted(self.data.iterdir())}
        progress("incremental backups of version 2")
        order = self.phase(order, "incremental", v2_bytes, before_repeat=lambda t: self.reset(t, saved))
        shutil.rmtree(saved, ignore_errors=True)
        order = order[1:] + order[:1]
        progress("restores of the latest backup, each followed by `sync` (timed)")
        order = self.phase(order, "restore", v2_bytes)
        order = order[1:] + order[:1]
        progress("restores of the latest backup without a sync (Backstop: --no-sync)")
        order = self.phase(order, "restore-nosync", v2_bytes)
        order = order[1:] + order[:1]
        progress("restores of the latest backup over a copy of version 1, each followed by `sync`")
        overs = [t for t in order if t.restore_over_cmd(self.work) is not None]
        self.phase(overs, "over", v2_bytes)

        progress("reading back and checking every byte of the repository")
        checkers = [t for t in order if t.check_cmd() is not None]
        self.phase(checkers, "check", v2_bytes)

        progress("copying both backups into a second repository")
        copiers = [t for t in order if t.copy_cmd() is not None]
        self.phase(copiers, "copy", v2_bytes)

        progress("deleting the full backup and giving back its space")
        pruners = [t for t in order if t.prune_cmd() is not None]
        after_incremental = self.work / "after-incremental"
        if self.args.repeat > 1 or self.args.keep:
            self.save(pruners, after_incremental)
        self.phase(pruners, "prune", v2_bytes, before_repeat=lambda t: self.reset(t, after_incremental))
        if not self.args.keep:
            shutil.rmtree(after_incremental, ignore_errors=True)

        progress("peak RSS with 50 earlier backups in the repository")
        self.history = self.history_rss(backstop_bin, earlier=5 if self.smoke else 50)

        progress("counting changed pages (incremental lower bound)")
        self.lower_bound = page_diff(self.v1, self.data, self.out / "logs")
        shutil.rmtree(self.v1)

        if not self.args.skip_native:
            progress("database-native peers")
            self.run_native(backstop_bin)

        self.loads.append(("end", os.getloadavg()))
        self.meta = {
            "interference": interference(self.runs),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "smoke": self.smoke,
            "target_size": self.size,
            "v1_bytes": v1_bytes,
            "v2_bytes": v2_bytes,
            "parts_v1": part_sizes_v1,
            "parts_v2": part_sizes_v2,
            "pg_scale": self.dataset.pg_scale,
            "sqlite_rows": self.dataset.sqlite_rows,
            "rocksdb_keys": self.dataset.rocks_keys,
            "host": platform.node(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
            "loadavg": [(label, [round(x, 2) for x in la]) for label, la in self.loads],
            "versions": self.versions,
            "backstop_bin": str(backstop_bin),
            "seconds": round(time.monotonic() - started, 1),
            "repeat": self.args.repeat,
            "caches_dropped": self.caches_dropped,
            "page_reporting": self.page_reporting,
            "prefaults": self.prefaults,
        }

    # -- memory with history ---------------------------------------------------------------------

    def history_rss(self, backstop_bin, earlier=50):
        """Peak RSS of a full backup of the data into an empty repository and into one that
        already holds `earlier` backups of other data (each a different random file of 1/100 of
        the data size plus a few small files): the median of `--repeat` runs each."""
        each = max(64 * 1024, self.size // 100)
        fresh = Backstop(self.work / "hist-fresh", backstop_bin, name="history-fresh")
        full = Backstop(self.work / "hist-full", backstop_bin, name="history-50")
        for t in (fresh, full):
            t.setup(self.runner)
        other = self.work / "other"
        for i in range(earlier):
            shutil.rmtree(other, ignore_errors=True)
            other.mkdir()
            (other / "blob.bin").write_bytes(os.urandom(each))
            for j in range(20):
                (other / f"note-{j}.txt").write_text(f"backup {i} note {j}\n" * (50 + i))
            self.runner.run(f"history-earlier-{i}", full.backup_cmd("full", other), env=full.env())
        shutil.rmtree(other, ignore_errors=True)
        # Peak RSS varies by a few MiB from run to run (buffers in flight), as much as the
        # difference measured: like every timed step, `--repeat` runs per repository, the order
        # alternating, each into a fresh copy of it, and the median compared.
        runs = {t.name: [] for t in (fresh, full)}
        for round_ in range(self.args.repeat):
            for t in (fresh, full) if round_ % 2 == 0 else (full, fresh):
                scratch = t.repo.with_name(t.repo.name + "-run")
                shutil.rmtree(scratch, ignore_errors=True)
                shutil.copytree(t.repo, scratch)
                run = Backstop(t.work, backstop_bin, name=t.name)
                run.repo = scratch
                self.prepare(self.data)
                m = self.runner.run(f"{t.name}-backup", run.backup_cmd("full", self.data), env=run.env())
                runs[t.name].append({"wall_s": round(m.wall, 3), "peak_rss_mib": round(m.maxrss_kib / 1024, 1)})
                shutil.rmtree(scratch, ignore_errors=True)
        rows = {}
        for name, measured in runs.items():
            rss = sorted(r["peak_rss_mib"] for r in measured)
            rows[name] = {
                "wall_s": statistics.median(r["wall_s"] for r in measured),
                "peak_rss_mib": statistics.median(rss),
                "peak_rss_runs": [r["peak_rss_mib"] for r in measured],
            }
        result = {
            "earlier_backups": earlier,
            "earlier_bytes_each": each,
            "fresh": rows["history-fresh"],
            "with_history": rows["history-50"],
        }
        progress(
            f"  peak RSS {rows['history-fresh']['peak_rss_mib']} MiB into an empty repository, "
            f"{rows['history-50']['peak_rss_mib']} MiB with {earlier} earlier backups"
        )
        for t in (fresh, full):
            shutil.rmtree(t.repo, ignore_errors=True)
        return result

    # -- database-native peers -----------------------------------------------------------------

    def native_measure(self, db, label, argv, grows, env=None):
        """One backup of the native comparison: wall, CPU, peak RSS and the bytes `grows` (a
        backup directory or repository) gained. None, with a note, when the command fails."""
        read_tree(self.data)
        self.settle()
        # No drop here, but the restores before left freed memory the host may have taken.
        self.touch_freed_memory()
        before = tree_bytes(grows) if Path(grows).exists() else 0
        try:
            m = self.runner.run(f"native-{db}-{label}", argv, env=env)
        except BenchError as e:
            self.note(f"native {db}: {label} failed: {str(e).splitlines()[0]} (logs in {self.runner.logdir})")
            return None
        return {
            "wall_s": round(m.wall, 3),
            "cpu_s": round(m.cpu, 3),
            "peak_rss_mib": round(m.maxrss_kib / 1024, 1),
            "bytes": tree_bytes(grows) - before,
        }

    def native_compare(
        self, db, native_label, native_cmds, second_kind, location, kind, workload, backstop_bin
    ):
        """Backstop's `--source KIND` and the database's own tool, each twice: a first backup,
        then `workload`, then a second one (Backstop: incremental; the native tool: as
        `second_kind` says). `native_cmds(n)` gives the native tool's argv and the path whose
        growth counts for its n-th backup (None: the tool is missing)."""
        env = {"BACKSTOP_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(self.work / "cache" / "native")}
        # Backstop as configured, and each `--variant` (a compression level, say) in a
        # repository of its own.
        configs = [Backstop(self.work, backstop_bin)] + [
            Backstop(self.work, backstop_bin, name=f"backstop[{label}]", extra=flags.split())
            for label, _, flags in (spec.partition("=") for spec in self.args.variant)
        ]
        backups = {}
        for config in configs:
            repo = self.work / "native" / f"{config.name}-{db}"
            init = [backstop_bin, "--repo", repo, "-q", "init"] + config.init_extra
            self.runner.run(f"native-{db}-{config.name}-init", init, env=env)
            argv = [backstop_bin, "--repo", repo] + config.extra + ["-q", "backup", "--source", kind, location]
            backups[config.name] = (argv, repo)
        rows = {name: [] for name in backups}
        rows["native"] = []
        for n in (1, 2):
            if n == 2:
                workload()
            # Backstop first: `db_hotbackup -u` removes log files from the live environment.
            for name, (argv, repo) in backups.items():
                rows[name].append(self.native_measure(db, f"{name}-{n}", argv, repo, env=env))
            cmd = native_cmds(n)
            if cmd:
                rows["native"].append(self.native_measure(db, f"{native_label}-{n}", cmd[0], cmd[1]))
        for name in backups:
            self.native.append(
                {"db": db, "tool": f"{name} --source {kind}", "runs": rows[name], "second": "incremental"}
            )
        if rows["native"]:
            self.native.append(
                {"db": db, "tool": native_label, "runs": rows["native"], "second": second_kind}
            )

    def run_native(self, backstop_bin):
        self.prefault_counter = "native"
        native = self.work / "native"
        native.mkdir()
        ds = self.dataset
        if "sqlite" in ds.parts:
            sqlite = shutil.which("sqlite3")
            if not sqlite:
                self.note("native sqlite: the sqlite3 shell is not installed (scripts/install/sqlite.sh)")

            def sqlite_cmd(n):
                out = native / f"sqlite-backup-{n}.db"
                return ([sqlite, ds.sqlite_path, f".backup '{out}'"], out) if sqlite else None

            self.native_compare(
                "sqlite",
                "sqlite3 .backup",
                sqlite_cmd,
                "full copy",
                str(ds.sqlite_path),
                "sqlite",
                ds.sqlite_workload,
                backstop_bin,
            )
        if "rocksdb" in ds.parts:
            ldb = shutil.which("ldb") or shutil.which("rocksdb_ldb")
            if not ldb:
                self.note("native rocksdb: ldb is not installed (scripts/install/rocksdb.sh)")
            out = native / "ldb-backup"

            def ldb_cmd(n):
                # Debian's RocksDB 7.8 BackupEngine; a second backup shares the unchanged SSTs.
                argv = [
                    ldb,
                    f"--db={ds.rocks_dir}",
                    "--ignore_unknown_options",
                    "backup",
                    f"--backup_dir={out}",
                    "--num_threads=2",
                ]
                return (argv, out) if ldb else None

            self.native_compare(
                "rocksdb",
                "ldb backup",
                ldb_cmd,
                "incremental (shared SSTs)",
                str(ds.rocks_dir),
                "rocksdb",
                ds.rocks_workload,
                backstop_bin,
            )
        self.run_native_bdb(backstop_bin, native)
        if "pg" in ds.parts:
            ds.pg_start()
            try:

                def basebackup_cmd(n):
                    out = native / f"pg_basebackup-{n}"
                    argv = [
                        PG_BIN / "pg_basebackup",
                        "-D",
                        out,
                        "-Fp",
                        "-X",
                        "stream",
                        "-c",
                        "fast",
                    ]
                    # Without `--no-sync`: the backup is on disk when the tool exits, as
                    # Backstop's is (and `sqlite3 .backup`, `ldb backup` and `db_hotbackup`
                    # fdatasync theirs too).
                    return (argv + ds.pg_client_args(), out)

                self.native_compare(
                    "postgres",
                    "pg_basebackup",
                    basebackup_cmd,
                    "full copy (PostgreSQL 15 has no incremental)",
                    ds.pg_conninfo(),
                    "postgres",
                    ds.pg_workload,
                    backstop_bin,
                )
            finally:
                ds.pg_stop()

    def run_native_bdb(self, backstop_bin, native):
        hotbackup = shutil.which("db5.3_hotbackup") or shutil.which("db_hotbackup")
        writer = ROOT / "crates" / "backstop" / "tests" / "support" / "bdb_writer.py"
        if not hotbackup:
            self.note(
                "native bdb: db5.3_hotbackup is not installed (scripts/install/bdb.sh); no Berkeley DB run"
            )
            return
        probe = subprocess.run([sys.executable, "-c", "import berkeleydb"], capture_output=True)
        if probe.returncode != 0 or not writer.exists():
            self.note(
                "native bdb: the berkeleydb Python module (scripts/install/bdb.sh) or the bdb tests' writer "
                "is missing; no Berkeley DB run"
            )
            return
        env_dir = native / "bdb-env"

        def write(seconds):
            self.runner.run(
                "bdb-writer",
                [
                    sys.executable,
                    writer,
                    "run",
                    "--home",
                    env_dir,
                    "--seq-file",
                    native / "bdb-seq",
                    "--data-dir",
                    "data",
                    "--accounts",
                    "20000" if self.smoke else "200000",
                    "--history-bytes",
                    "1000",
                    "--lg-max",
                    str(4 * MIB),
                    "--max-seconds",
                    str(seconds),
                ],
            )

        write(1 if self.smoke else 15)
        out = native / "bdb-hotbackup"

        def hotbackup_cmd(n):
            # -u: the second run copies the new log files into the same directory.
            return ([hotbackup] + (["-u"] if n == 2 else []) + ["-D", "-h", env_dir, "-b", out], out)

        self.native_compare(
            "bdb",
            "db5.3_hotbackup",
            hotbackup_cmd,
            "update (-u: new logs)",
            str(env_dir),
            "bdb",
            lambda: write(1 if self.smoke else 5),
            backstop_bin,
        )


def cpu_counters():
    """Busy and stolen CPU-seconds of the whole machine since boot, from /proc/stat; None where
    there is none. Busy is user, nice, system, irq and softirq time; steal is time a virtual
    CPU was ready to run while the hypervisor ran something else."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    ticks = [int(x) for x in fields[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
    steal = ticks[7] if len(ticks) > 7 else 0
    return busy / hz, steal / hz


def interference(runs):
    """What the timed runs shared the machine with: CPU-seconds spent outside the measured
    process trees and stolen by the hypervisor, summed, and the run with the most of both."""
    measured = [r for rs in runs.values() for r in rs if r.get("other_cpu_s") is not None]
    if not measured:
        return None
    worst = max(measured, key=lambda r: r["other_cpu_s"] + r["steal_s"])
    return {
        "runs": len(measured),
        "wall_s": round(sum(r["wall_s"] - (r.get("sync_s") or 0) for r in measured), 2),
        "other_cpu_s": round(sum(r["other_cpu_s"] for r in measured), 2),
        "steal_s": round(sum(r["steal_s"] for r in measured), 2),
        "worst": {k: worst[k] for k in ("tool", "step", "run", "other_cpu_s", "steal_s")},
    }


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def mib(n):
    return "–" if n is None else f"{n / MIB:,.1f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def write_report(bench, chart_name):
    rows, meta, lb = bench.results, bench.meta, bench.lower_bound
    get = {(r["tool"], r["step"]): r for r in rows}
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    lines = []
    w = lines.append
    w(f"# Backstop benchmark{' (smoke mode)' if meta['smoke'] else ''}\n")
    w(
        f"Run {meta['date']} on {meta['host']}: {meta['cpus']} × {meta['cpu_model']}, {meta['mem_gib']} GiB, "
        f"Linux {meta['kernel']}. Harness time {meta['seconds']} s.\n"
    )
    la = meta["loadavg"]
    peak_load = max(x[1][0] for x in la)
    w(
        f"Load average (1/5/15 min) at start {la[0][1]}, at end {la[-1][1]}; highest 1-minute value at the "
        f"start of a step {peak_load:.2f} (it counts the tools' own earlier steps, so it says little about "
        "other work).\n"
    )
    busy = meta.get("interference")
    if busy:
        worst = busy["worst"]
        w(
            f"What else the machine did during the {busy['runs']} timed runs ({busy['wall_s']} s of wall time, from "
            f"/proc/stat): {busy['other_cpu_s']} CPU-seconds outside the measured tools (other processes, and kernel "
            "threads such as writeback, which the tools' own writes set working), and the hypervisor took "
            f"{busy['steal_s']} CPU-seconds from this guest (steal). The most in one run: {worst['tool']} "
            f"{worst['step']} (run {worst['run']}), {worst['other_cpu_s']} s outside and {worst['steal_s']} s "
            "stolen.\n"
        )
    w(
        "Method: every tool backs up the same directory (a stopped PostgreSQL cluster's files, an SQLite "
        "file, a closed RocksDB directory, plain files), first version 1 (full), then version 2 "
        "(incremental), then restores the latest backup twice: once timed until the files are on disk (the "
        "tool's restore, then `sync`; Backstop flushes its restores itself, so its `sync` finds little to do) "
        "and once timed until the tool exits (`restore, no sync`; Backstop with `--no-sync`). Before each timed step the harness "
        + ("" if meta["smoke"] else "runs `sync`, so no tool pays for the previous one's dirty pages, ")
        + (
            "drops the clean page cache (`drop_caches`), so no tool pays for reclaiming pages earlier steps left, then "
            if meta.get("caches_dropped")
            else ""
        )
        + "reads the whole source (before a restore: the tool's repository) once, untimed, so every tool starts with a warm "
        "page cache"
        + (
            ", then touches and frees anonymous memory of the data's size and 512 MiB more (this guest reports free "
            "pages to its host, which takes back what `drop_caches` frees: without it, `cp -a` restoring right after "
            "a drop took up to 7× as long, in host page faults)"
            if meta["prefaults"]["steps"]
            else ""
        )
        + ". Tools run one at a time; who goes first rotates between the steps. Wall time is measured by the "
        "harness; CPU time (user+sys) and peak RSS by GNU time around the tool's process (children "
        "included; for a pipeline, the largest member's RSS). Repository bytes are apparent file sizes; "
        "bytes added = growth of the repository in that step. restic, borg and Backstop encrypt; borg, "
        "Backstop and tar use zstd level 3, restic its default (`auto`). Restores are compared byte for "
        "byte (every path, kind, size, content, symlink target) with version 2.\n"
    )
    w("## Data set\n")
    w(
        f"Version 1: {mib(meta['v1_bytes'])} MiB; version 2: {mib(meta['v2_bytes'])} MiB "
        f"(pgbench scale {meta['pg_scale']}, {meta['sqlite_rows']:,} SQLite rows, {meta['rocksdb_keys']:,} RocksDB keys).\n"
    )
    w("| part | v1 MiB | v2 MiB | changed 4 KiB pages MiB | changed 8 KiB pages MiB |")
    w("| --- | ---: | ---: | ---: | ---: |")
    for part, acc in lb["parts"].items():
        w(
            f"| {part} | {mib(meta['parts_v1'].get(part))} | {mib(acc['size'])} | {mib(acc['pages4k'])} | {mib(acc['pages8k'])} |"
        )
    t = lb["total"]
    w(
        f"| **total** | {mib(meta['v1_bytes'])} | {mib(t['size'])} | {mib(t['pages4k'])} | {mib(t['pages8k'])} |\n"
    )
    w("## Results\n")
    repeat = meta.get("repeat", 1)
    if repeat > 1:
        w(
            f"Each step ran {repeat} times per tool, rotating the order; each row is the run with the median "
            "wall time (its CPU time and sizes with it), the peak RSS the highest of all runs, and the last "
            "column every run's wall time in order.\n"
        )
    runs_head = " | wall s of every run" if repeat > 1 else ""
    runs_sep = " | ---" if repeat > 1 else ""

    def runs_cell(row):
        """The last column with --repeat: every run's wall time, in order."""
        return " " + ", ".join(f"{x:.2f}" for x in row.get("wall_runs", [])) + " |" if repeat > 1 else ""

    w(f"| tool | step | wall s | CPU s | peak RSS MiB | MiB/s | repository MiB | added MiB | restore{runs_head} |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---" + runs_sep + " |")
    for tool in tools:
        for step in STEPS:
            r = get.get((tool, step))
            if not r:
                continue
            check = "" if step not in RESTORE_STEPS else ("identical" if r.get("verified") else "**DIFFERS**")
            w(
                f"| {tool} | {step} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_mib']:.1f} | "
                f"{r['mib_per_s']} | {mib(r['repo_bytes'])} | {mib(r['bytes_added'])} | {check} |"
                + runs_cell(r)
            )
    w("")
    bs = {s: get.get(("backstop", s)) for s in STEPS}
    if all(bs.values()):
        w("## Ratios Backstop / peer\n")
        w("Below 1 means Backstop is faster, smaller or leaner.\n")
        w(
            "| peer | full wall | incr. wall | restore wall | restore wall, no sync | full CPU | incr. CPU | "
            "full added | incr. added | backup peak RSS | restore peak RSS |"
        )
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for tool in tools:
            if tool == "backstop":
                continue
            p = {s: get.get((tool, s)) for s in STEPS}
            if not all(p.values()):
                continue
            bs_rss = max(bs["full"]["peak_rss_mib"], bs["incremental"]["peak_rss_mib"])
            p_rss = max(p["full"]["peak_rss_mib"], p["incremental"]["peak_rss_mib"])
            w(
                f"| {tool} | {ratio(bs['full']['wall_s'], p['full']['wall_s'])} | "
                f"{ratio(bs['incremental']['wall_s'], p['incremental']['wall_s'])} | "
                f"{ratio(bs['restore']['wall_s'], p['restore']['wall_s'])} | "
                f"{ratio(bs['restore-nosync']['wall_s'], p['restore-nosync']['wall_s'])} | "
                f"{ratio(bs['full']['cpu_s'], p['full']['cpu_s'])} | "
                f"{ratio(bs['incremental']['cpu_s'], p['incremental']['cpu_s'])} | "
                f"{ratio(bs['full']['bytes_added'], p['full']['bytes_added'])} | "
                f"{ratio(bs['incremental']['bytes_added'], p['incremental']['bytes_added'])} | "
                f"{ratio(bs_rss, p_rss)} | {ratio(bs['restore']['peak_rss_mib'], p['restore']['peak_rss_mib'])} |"
            )
        w("")
        w("## Incremental lower bound\n")
        added = bs["incremental"]["bytes_added"]
        w(
            f"Backstop added {mib(added)} MiB for version 2. The pages that differ between the versions: "
            f"{mib(t['pages4k'])} MiB of 4 KiB pages (Backstop's bytes are {ratio(added, t['pages4k'])}× that), "
            f"{mib(t['pages8k'])} MiB of 8 KiB pages ({ratio(added, t['pages8k'])}×); the changed 4 KiB pages "
            f"compress with zstd -3 to {mib(t['pages4k_zstd3'])} MiB ({ratio(added, t['pages4k_zstd3'])}×). "
            "Backstop's repository bytes are compressed, so the last figure is the like-for-like bound; "
            "index, tree and snapshot objects come on top.\n"
        )
        w("## Targets of issue 9\n")
        w(target_table(get, tools, bench.history))
    def step_table(step, title, method, columns, cells, align):
        """A section for one step after the restores: each tool's wall and CPU time, peak RSS,
        the step's own `columns` (`cells` gives a row's), and Backstop's wall time over each
        tool's."""
        done = [t for t in tools if get.get((t, step))]
        if not done:
            return
        w(f"## {title}\n")
        w(method)
        w(f"| tool | wall s | CPU s | peak RSS MiB | {columns} | Backstop / tool{runs_head} |")
        w(f"| --- | ---: | ---: | ---: | {align} | ---:" + runs_sep + " |")
        ours = get.get(("backstop", step))
        for tool in done:
            r = get[(tool, step)]
            versus = ratio(ours["wall_s"], r["wall_s"]) if ours and tool != "backstop" else ""
            w(
                f"| {tool} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_mib']:.1f} | "
                f"{cells(r)} | {versus} |"
                + runs_cell(r)
            )
        w("")

    step_table(
        "check",
        "Reading back every byte",
        "After the restores, each tool reads its whole repository (both backups) and checks it: "
        "Backstop `verify --full` (every pack against its BLAKE3 name, every blob decrypted, decompressed "
        "and hashed), restic and rustic `check --read-data`, borg `check --verify-data`, and for "
        "tar+zstd `zstd -t` (the frames' xxh64 checksums). MiB/s is of the repository's bytes.\n",
        "repository MiB | MiB/s",
        lambda r: f"{mib(r['repo_bytes'])} | "
        f"{round(r['repo_bytes'] / MIB / r['wall_s'], 1) if r['wall_s'] > 0 else None}",
        "---: | ---:",
    )
    step_table(
        "copy",
        "Copying to a second repository",
        "After the restores, each tool copies both backups (full and incremental) into a second, "
        "empty repository on the same disk, made from the first so that the two share what they "
        "must (untimed): Backstop `init --from-repo` then `copy --from-repo` (stored units copied "
        "as they are, each source pack checked against its id), restic `init --from-repo "
        "--copy-chunker-params` then `copy --from-repo`, rustic `copy --init` with a filter that "
        "matches nothing, then `copy --target` (both decrypt every blob and encrypt it again for "
        "the other repository's key).\n",
        "copy MiB",
        lambda r: mib(r["repo_bytes"]),
        "---:",
    )
    step_table(
        "over",
        "Restoring over an earlier copy",
        "The target holds version 1 (as backed up) and each tool makes it the latest backup "
        "(version 2): Backstop `restore --delta` (every file there read and hashed chunk by chunk, "
        "only the chunks that differ fetched and written, what the backup lacks deleted), rustic "
        "`restore --delete --verify-existing` (the same promise: without `--verify-existing` it "
        "trusts a file whose size and mtime match). Timed until on disk (with `sync`), compared "
        "byte for byte with version 2. A full restore into an empty directory is in the results "
        "above.\n",
        "restore",
        lambda r: "identical" if r.get("verified") else "**DIFFERS**",
        "---",
    )
    pruned = [t for t in tools if get.get((t, "prune"))]
    if pruned:
        w("## Deleting the full backup\n")
        w(
            "After the restores, each tool deletes the full backup, keeps the incremental and gives back "
            "the space only the full used: Backstop `delete 1` + `gc --grace 0s`, restic and rustic "
            "`forget --keep-last 1 --prune`, borg `delete ::full` + `compact`, `cp -a` removes its first "
            "copy (`tar` is left out: its incremental needs the full). Space that other backups still "
            "use stays.\n"
        )
        w(f"| tool | wall s | CPU s | peak RSS MiB | repository before MiB | after MiB | freed MiB{runs_head} |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---:" + runs_sep + " |")
        for tool in pruned:
            r = get[(tool, "prune")]
            before = r["repo_bytes"] - r["bytes_added"]
            w(
                f"| {tool} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_mib']:.1f} | {mib(before)} | "
                f"{mib(r['repo_bytes'])} | {mib(-r['bytes_added'])} |"
                + runs_cell(r)
            )
        w("")
    if bench.native:
        w("## Database-native peers\n")
        w(
            "Each database backed up with its own tool and with Backstop's source for it, on the same files "
            "(PostgreSQL: the running server, whose own CPU is not counted; the others closed): a first "
            "backup, then a short workload (pgbench, SQLite updates, RocksDB writes, more Berkeley DB "
            "transactions), then a second backup. Stored: what the backup added to its directory or (Backstop) "
            "to its fresh repository, compressed and encrypted. Each `--variant` runs here too, in a repository "
            "of its own (`backstop[LABEL]`): `--variant c0='--compression 0'` shows what the compression costs."
            + (
                " Before each backup the harness touches and frees memory, as above (caches are not dropped here)."
                if meta["prefaults"]["native"]
                else ""
            )
            + "\n"
        )
        w(
            "| database | tool | 1st wall s | 1st CPU s | peak RSS MiB | 1st stored MiB | 2nd wall s | "
            "2nd stored MiB | 2nd backup is |"
        )
        w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in bench.native:
            first, second = (r["runs"] + [None, None])[:2]
            if not first:
                w(f"| {r['db']} | {r['tool']} | failed | | | | | | |")
                continue
            rss = max(x["peak_rss_mib"] for x in r["runs"] if x)
            sec = (f"{second['wall_s']:.2f} | {mib(second['bytes'])}") if second else "failed | –"
            w(
                f"| {r['db']} | {r['tool']} | {first['wall_s']:.2f} | {first['cpu_s']:.2f} | {rss:.1f} | "
                f"{mib(first['bytes'])} | {sec} | {r['second']} |"
            )
        w("")
    w("## Versions\n")
    for name, v in meta["versions"].items():
        w(f"- {name}: {v}")
    w("")
    if bench.notes or bench.failures:
        w("## Notes\n")
        for n in bench.failures:
            w(f"- **FAILED**: {n}")
        for n in bench.notes:
            w(f"- {n}")
        w("")
    w(f"![chart]({chart_name})\n")
    return "\n".join(lines)


def target_table(get, tools, history=None):
    """Pass/fail of issue 9's targets, against the fastest deduplicating peer in this run."""
    peers = [t for t in tools if t in ("restic", "borg", "rustic")]
    out = ["| target | measured | result |", "| --- | --- | --- |"]

    def wall(t, s):
        r = get.get((t, s))
        return r["wall_s"] if r else None

    def row(name, measured, ok):
        out.append(f"| {name} | {measured} | {'met' if ok else '**not met**'} |")

    b = {s: get[("backstop", s)] for s in STEPS}
    label = {"restore": "restore (until on disk)", "restore-nosync": "restore (no sync)"}
    if peers:
        for step, factor in (("full", 1.5), ("incremental", 2.0), ("restore", 2.0), ("restore-nosync", 2.0)):
            fastest = min(peers, key=lambda t: wall(t, step) or 1e9)
            fw = wall(fastest, step)
            # What the target asks, beside what copying the files takes (`cp -a`, with `sync`
            # for the restore timed until on disk): a target below that is below the machine's
            # floor for writing the data, whatever the tool.
            floor = ""
            cp = wall("cp-a", step) if step in RESTORE_STEPS else None
            if cp:
                floor = f" (the target: ≤ {fw / factor:.2f} s; `cp -a`{' + `sync`' if step == 'restore' else ''} took {cp:.2f} s)"
            row(
                f"{label.get(step, step)}: ≥ {factor}× faster than the fastest peer ({fastest})",
                f"{b[step]['wall_s']:.2f} s vs {fw:.2f} s = {fw / b[step]['wall_s']:.2f}×{floor}",
                fw / b[step]["wall_s"] >= factor,
            )
    restic = {s: get.get(("restic", s)) for s in ("full", "incremental")}
    if all(restic.values()):
        row(
            "full: repository no larger than restic's",
            f"{mib(b['full']['repo_bytes'])} vs {mib(restic['full']['repo_bytes'])} MiB = "
            f"{100 * b['full']['repo_bytes'] / max(1, restic['full']['repo_bytes']):.1f}%",
            b["full"]["repo_bytes"] <= restic["full"]["repo_bytes"],
        )
        row(
            "incremental: bytes added ≤ 40% of restic's",
            f"{mib(b['incremental']['bytes_added'])} vs {mib(restic['incremental']['bytes_added'])} MiB = "
            f"{100 * b['incremental']['bytes_added'] / max(1, restic['incremental']['bytes_added']):.1f}%",
            b["incremental"]["bytes_added"] <= 0.4 * restic["incremental"]["bytes_added"],
        )
    for step in RESTORE_STEPS:
        cp = get.get(("cp-a", step))
        if cp:
            row(
                f"{label[step]}: within 2× of `cp -a`" + (" + `sync`" if step == "restore" else ""),
                f"{b[step]['wall_s']:.2f} s vs {cp['wall_s']:.2f} s = {b[step]['wall_s'] / cp['wall_s']:.2f}×",
                b[step]["wall_s"] <= 2 * cp["wall_s"],
            )
    peak_step = max(b, key=lambda s: b[s]["peak_rss_mib"])
    peak = b[peak_step]["peak_rss_mib"]
    # Every run of the step that peaked, so that one run's outlier shows as one.
    peak_runs = b[peak_step].get("peak_rss_runs", [])
    row(
        "peak RSS ≤ 64 MiB for backup and restore",
        f"{peak:.1f} MiB ({peak_step}"
        + (f"; its runs {', '.join(f'{x:.1f}' for x in peak_runs)}" if len(peak_runs) > 1 else "")
        + ")",
        peak <= 64,
    )
    if history:
        a = history["fresh"]["peak_rss_mib"]
        h = history["with_history"]["peak_rss_mib"]
        row(
            f"peak RSS flat (within 10%) with {history['earlier_backups']} earlier backups of other data",
            f"{h:.1f} vs {a:.1f} MiB into an empty repository = {h / a:.2f}×"
            + (
                f" (medians; runs {', '.join(map(str, history['with_history']['peak_rss_runs']))} vs "
                f"{', '.join(map(str, history['fresh']['peak_rss_runs']))})"
                if len(history["fresh"].get("peak_rss_runs", [])) > 1
                else ""
            ),
            h <= 1.1 * a,
        )
    return (
        "\n".join(out)
        + "\n\nThe per-blob index memory is measured by `cargo run --release -p backstop --example "
        "index_memory` (docs/format.md), not here.\n"
    )


def write_chart(bench, out_dir):
    """chart.png with matplotlib when it is importable, else a hand-drawn chart.svg."""
    rows = bench.results
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    get = {(r["tool"], r["step"]): r for r in rows}
    steps = list(STEPS)
    panels = [
        (
            "wall time (s)",
            [[(get.get((t, s)) or {}).get("wall_s") or 0 for t in tools] for s in steps],
            steps,
        ),
        (
            "bytes added (MiB)",
            [[((get.get((t, s)) or {}).get("bytes_added") or 0) / MIB for t in tools] for s in steps[:2]],
            steps[:2],
        ),
        (
            "peak RSS (MiB)",
            [[(get.get((t, s)) or {}).get("peak_rss_mib") or 0 for t in tools] for s in steps],
            steps,
        ),
    ]
    lb = bench.lower_bound["total"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = out_dir / "chart.svg"
        path.write_text(svg_chart(tools, panels, lb))
        bench.note(
            "matplotlib is not importable: drew chart.svg by hand (pip install matplotlib for chart.png)"
        )
        return path.name
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for ax, (title, series, labels) in zip(axes, panels):
        width = 0.8 / len(series)
        for i, (vals, label) in enumerate(zip(series, labels)):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(tools))]
            bars = ax.bar(xs, vals, width, label=label, color=colors[i])
            ax.bar_label(
                bars, fmt="%.1f" if max(vals or [0]) < 100 else "%.0f", fontsize=7, rotation=90, padding=2
            )
        ax.set_xticks(range(len(tools)))
        ax.set_xticklabels(tools, rotation=30, ha="right")
        ax.set_title(title)
        ax.margins(y=0.15)
        if title.startswith("bytes"):
            ax.set_yscale("log")  # cp -a's full copies would flatten every other bar
            ax.set_title(title + ", log scale")
            ax.axhline(
                lb["pages4k"] / MIB, color="red", linestyle="--", linewidth=1, label="changed 4 KiB pages"
            )
            if lb.get("pages4k_zstd3"):
                ax.axhline(
                    lb["pages4k_zstd3"] / MIB,
                    color="purple",
                    linestyle=":",
                    linewidth=1,
                    label="… compressed (zstd -3)",
                )
        ax.legend(fontsize=8)
    meta = bench.meta
    fig.suptitle(
        f"Backstop vs peers on a {meta['v1_bytes'] / MIB:.0f} MiB database mix "
        f"({meta['cpus']} cores, load {meta['loadavg'][0][1][0]:.1f}; lower is better)"
    )
    fig.tight_layout()
    path = out_dir / "chart.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def svg_chart(tools, panels, lb):
    """Three grouped bar charts as plain SVG (no dependency)."""
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    pw, ph, top, left = 380, 300, 40, 50
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{pw * 3 + 40}" height="{ph + 140}" '
        'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>'
    ]
    for p, (title, series, labels) in enumerate(panels):
        x0 = 20 + p * pw
        top_val = max([v for s in series for v in s] + [1e-9]) * 1.15
        parts.append(f'<text x="{x0 + pw / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>')
        parts.append(
            f'<line x1="{x0 + left}" y1="{top + ph - 60}" x2="{x0 + pw - 10}" y2="{top + ph - 60}" stroke="black"/>'
        )
        plot_h = ph - 60
        group = (pw - left - 20) / max(1, len(tools))
        bw = group * 0.8 / len(series)
        for i, vals in enumerate(series):
            for j, v in enumerate(vals):
                h = plot_h * v / top_val
                x = x0 + left + j * group + group * 0.1 + i * bw
                y = top + plot_h - h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{colors[i]}"/>'
                )
                parts.append(
                    f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="8">{v:.1f}</text>'
                )
        for j, t in enumerate(tools):
            x = x0 + left + j * group + group / 2
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="end" '
                f'transform="rotate(-30 {x:.1f} {top + plot_h + 14})">{t}</text>'
            )
        for i, label in enumerate(labels):
            parts.append(
                f'<rect x="{x0 + left + i * 90}" y="{top + ph + 30}" width="10" height="10" fill="{colors[i]}"/>'
                f'<text x="{x0 + left + i * 90 + 14}" y="{top + ph + 39}">{label}</text>'
            )
        if title.startswith("bytes"):
            y = top + plot_h - plot_h * (lb["pages4k"] / MIB) / top_val
            parts.append(
                f'<line x1="{x0 + left}" y1="{y:.1f}" x2="{x0 + pw - 10}" y2="{y:.1f}" stroke="red" '
                'stroke-dasharray="4"/>'
            )
            parts.append(
                f'<text x="{x0 + pw - 10}" y="{y - 3:.1f}" text-anchor="end" fill="red">changed 4 KiB pages</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="tiny data set (a few MiB), seconds; what CI runs")
    ap.add_argument("--size", type=parse_size, help="target size of version 1 (default 1GiB; smoke 4MiB)")
    ap.add_argument(
        "--out",
        default=str(ROOT / "bench" / "out"),
        help="where report.md, report.json, the chart and logs go",
    )
    ap.add_argument("--backstop", help="the backstop binary (default $BACKSTOP_BIN, else a release build)")
    ap.add_argument(
        "--work",
        help="parent of the scratch directory (default /var/tmp; must be traversable by "
        f"the user {PG_USER} when run as root)",
    )
    ap.add_argument(
        "--only",
        nargs="*",
        help="peers to run besides backstop (restic borg rustic tar+zstd cp-a); none given: backstop only",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="an extra Backstop configuration LABEL=FLAGS, repeatable: e.g. t1='--threads 1', "
        "z1='--compression 1', plain='--no-encryption' (an unencrypted repository)",
    )
    ap.add_argument("--skip-native", action="store_true", help="leave out the database-native comparison")
    ap.add_argument(
        "--strict", action="store_true", help="fail instead of skipping when an installable tool is missing"
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch directory (and every repository as it was before the prune step, "
        "under after-incremental/)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every timed step N times per tool, rotating the order; report the median run",
    )
    args = ap.parse_args()

    bench = Bench(args)
    code = 0
    try:
        bench.run()
        chart = write_chart(bench, bench.out)
        report = write_report(bench, chart)
        (bench.out / "report.md").write_text(report)
        (bench.out / "report.json").write_text(
            json.dumps(
                {
                    "meta": bench.meta,
                    "results": bench.results,
                    "lower_bound": bench.lower_bound,
                    "native": bench.native,
                    "history": bench.history,
                    "notes": bench.notes,
                    "failures": bench.failures,
                },
                indent=2,
            )
        )
        print(report)
        print(f"wrote {bench.out / 'report.md'}, report.json and {chart}", file=sys.stderr)
        if bench.failures:
            print("FAILED:\n" + "\n".join(bench.failures), file=sys.stderr)
            code = 1
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        code = 1
    finally:
        if bench.dataset.pg_dir.exists() and (bench.dataset.pg_dir / "postmaster.pid").exists():
            bench.dataset.pg_stop()
        if args.keep:
            print(f"kept {bench.work}", file=sys.stderr)
        else:
            shutil.rmtree(bench.work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
