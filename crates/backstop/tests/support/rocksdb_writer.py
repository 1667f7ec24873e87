#!/usr/bin/env python3
"""RocksDB test helper (rocksdict): a writer process for live backups, and the restore check.

Modes:
  stress DB STATUS [--batch-keys K] [--value-size V] [--rate N] [--max-seconds S]
      Writes batch n = keys n*K .. n*K+K-1 plus `last_batch` = n in one atomic WriteBatch, WAL
      on, with tiny write buffers and file sizes so the database flushes, compacts and rolls its
      MANIFEST all the time. After each batch commits, STATUS is replaced (write + rename) with
      n, so a reader never sees a batch number that has not committed. Exits when killed, when
      its parent exits, or after S seconds.
  fill DB --mib N [--value-size V]
      Fills DB with N batches of 1 MiB of incompressible values (normal file sizes), compacts,
      turns off automatic compactions, prints `ready <batches> <keys per batch>` and then serves
      stdin: `flush` writes one more batch, flushes it to a new SST and prints `flushed <n>`; end
      of input closes the database. Check it with `--values random`.
  check DB [--batch-keys K] [--value-size V] [--values pattern|random]
      Opens a (restored) database with paranoid checks, scans it with checksum verification and
      checks that its keys are exactly those of batches 0..=last_batch, values included. Prints
      `{"last_batch": n, "keys": count}` and exits 0, or prints what is wrong and exits 1.
"""

import argparse
import json
import os
import random
import sys
import time

import rocksdict as r

LAST = b"last_batch"


def key(i):
    return b"k%012d" % i


def value(i, size, kind="pattern"):
    # Derived from the key so the check can tell a torn or misplaced value; `random` values are
    # incompressible (seeded by the key) so stored sizes are real.
    if kind == "random":
        return random.Random(i).randbytes(size)
    unit = b"%012d|" % i
    return (unit * (size // len(unit) + 1))[:size]


def table_options(opts):
    # format_version 5: Debian's ldb (RocksDB 7.8) cannot read the newer default (6), and the
    # tests run `ldb checkconsistency` on restored databases.
    table = r.BlockBasedOptions()
    table.set_format_version(5)
    opts.set_block_based_table_factory(table)


def stress(args):
    opts = r.Options(raw_mode=True)
    opts.create_if_missing(True)
    table_options(opts)
    opts.set_write_buffer_size(64 * 1024)
    opts.set_max_write_buffer_number(2)
    opts.set_target_file_size_base(128 * 1024)
    opts.set_max_bytes_for_level_base(512 * 1024)
    opts.set_level_zero_file_num_compaction_trigger(2)
    opts.set_max_manifest_file_size(32 * 1024)
    opts.set_max_background_jobs(2)
    db = r.Rdict(args.db, opts)
    parent = os.getppid()
    start = time.monotonic()
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    tmp = args.status + ".tmp"
    n = 0
    while True:
        batch = r.WriteBatch(raw_mode=True)
        for i in range(n * args.batch_keys, (n + 1) * args.batch_keys):
            batch.put(key(i), value(i, args.value_size))
        batch.put(LAST, b"%d" % n)
        db.write(batch)
        with open(tmp, "w") as f:
            f.write("%d\n" % n)
        os.replace(tmp, args.status)
        n += 1
        elapsed = time.monotonic() - start
        if elapsed > args.max_seconds or os.getppid() != parent:
            break
        if period:
            # Pace the writer so the database stays small; the test never waits on this.
            ahead = n * period - elapsed
            if ahead > 0:
                time.sleep(ahead)
    db.close()


def fill(args):
    opts = r.Options(raw_mode=True)
    opts.create_if_missing(True)
    table_options(opts)
    opts.set_write_buffer_size(16 << 20)
    opts.set_target_file_size_base(16 << 20)
    db = r.Rdict(args.db, opts)
    per_batch = max(1, (1 << 20) // args.value_size)

    def write_batch(n):
        batch = r.WriteBatch(raw_mode=True)
        for i in range(n * per_batch, (n + 1) * per_batch):
            batch.put(key(i), value(i, args.value_size, "random"))
        batch.put(LAST, b"%d" % n)
        db.write(batch)

    for n in range(args.mib):
        write_batch(n)
    db.flush(True)
    db.compact_range(None, None)
    db.set_options({"disable_auto_compactions": "true"})
    print("ready %d %d" % (args.mib, per_batch), flush=True)
    n = args.mib
    for line in sys.stdin:
        if line.strip() != "flush":
            continue
        write_batch(n)
        db.flush(True)
        n += 1
        print("flushed %d" % (n - 1), flush=True)
    db.close()


def check(args):
    opts = r.Options(raw_mode=True)
    opts.create_if_missing(False)
    opts.set_paranoid_checks(True)
    try:
        db = r.Rdict(args.db, opts)
    except Exception as e:  # noqa: BLE001 - report any open failure
        print("cannot open %s: %s" % (args.db, e))
        return 1
    read = r.ReadOptions()
    read.set_verify_checksums(True)
    it = db.iter(read)
    it.seek_to_first()
    count = 0
    last = None
    while it.valid():
        k = it.key()
        if k == LAST:
            last = int(it.value())
        else:
            if k != key(count):
                print("key %d is %r, expected %r (gap or stray key)" % (count, k, key(count)))
                return 1
            if it.value() != value(count, args.value_size, args.values):
                print("value of %r is wrong" % k)
                return 1
            count += 1
        it.next()
    del it
    db.close()
    if last is None:
        print("no last_batch key (%d keys)" % count)
        return 1
    if count != (last + 1) * args.batch_keys:
        print(
            "last_batch is %d, so %d keys were expected, found %d (torn batch)"
            % (last, (last + 1) * args.batch_keys, count)
        )
        return 1
    print(json.dumps({"last_batch": last, "keys": count}))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("stress")
    s.add_argument("db")
    s.add_argument("status")
    s.add_argument("--batch-keys", type=int, default=50)
    s.add_argument("--value-size", type=int, default=64)
    s.add_argument("--rate", type=float, default=400.0)
    s.add_argument("--max-seconds", type=float, default=300.0)
    f = sub.add_parser("fill")
    f.add_argument("db")
    f.add_argument("--mib", type=int, required=True)
    f.add_argument("--value-size", type=int, default=4000)
    c = sub.add_parser("check")
    c.add_argument("db")
    c.add_argument("--batch-keys", type=int, default=50)
    c.add_argument("--value-size", type=int, default=64)
    c.add_argument("--values", choices=["pattern", "random"], default="pattern")
    args = p.parse_args()
    if args.mode == "stress":
        stress(args)
    elif args.mode == "fill":
        fill(args)
    else:
        sys.exit(check(args))


if __name__ == "__main__":
    main()
