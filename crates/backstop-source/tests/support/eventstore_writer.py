#!/usr/bin/env python3
"""A test writer that follows EventStore's on-disk protocol, for backups taken under load.

EventStore cannot be installed here, so this process plays its part: it writes a database
directory the way EventStore does, with the same ordering rules a hot backup depends on.

Files (all integers little-endian):

* ``chunk-XXXXXX.YYYYYY``: chunk number X, version Y. A 128-byte header (EventStore's layout:
  u8 file type = 1, u8 version, i32 chunk size, i32 start number, i32 end number, i32 scavenged
  flag, 16-byte chunk id), a data area of ``chunk_size`` bytes, and a 128-byte footer (u8 flags:
  1 = completed, 2 = 12-byte map; i32 physical data size; i64 logical data size; i32 map size;
  zeros; MD5 of the data area in the last 16 bytes). A chunk being written is preallocated to
  header + chunk size + footer, as EventStore does.
* Records in the data area: ``i32 length | payload | i32 length`` (EventStore's prefix/suffix
  framing); the payload is ``u8 type = 0 | u8 version = 1 | i64 log position | u32 data length |
  data | MD5 of everything before it in the payload``. A record's log position is
  ``chunk number * chunk size + offset in the data area``.
* ``writer.chk``, ``chaser.chk``, ``epoch.chk``, ``truncate.chk``: 8-byte positions.
* ``index/``: table files named by GUID (``PTBL | u32 count | i64 positions | MD5``), the
  ``indexmap`` (EventStore's text format: MD5 of the rest in hex, version, ``prepare/commit``
  checkpoint, max auto-merge level, ``level,position,file`` lines), and
  ``index/stream-existence/streamExistenceFilter.{dat,chk}``: a bit per indexed record, and the
  position up to which the bits are flushed.

The protocol, in the order that makes a hot copy safe:

* append a batch of records to the current chunk, fsync it, then advance ``writer.chk``;
* when a record does not fit, complete the chunk (footer, fsync), create the next chunk (fsync
  it and the directory), then move ``writer.chk`` to the next chunk's start;
* the chaser reads back (and checks) what the writer made durable and advances ``chaser.chk``,
  one batch behind the writer;
* the index takes records the chaser has passed: a new table file (fsynced, renamed into place),
  then a new ``indexmap`` (written aside, fsynced, renamed), then merged tables replace four of a
  level and the old files are deleted; the filter bits are written and fsynced before its
  ``.chk`` moves;
* scavenging writes a completed chunk again as version Y+1 (scavenged flag, new chunk id, file
  trimmed to its data) under a temp name, fsyncs, renames it into place and deletes version Y.

Usage: ``eventstore_writer.py --db DIR [--chunk-size N] [--records N] [--stop-file PATH] ...``.
Prints ``ready`` once the database exists and the first batch is durable; exits 0 after
``--records`` records or when the stop file appears (or on SIGTERM).
"""

import argparse
import hashlib
import os
import random
import signal
import struct
import sys
import time
import uuid

HEADER = 128
FOOTER = 128
FILTER_BYTES = 64 * 1024

stopping = False


def on_term(_signum, _frame):
    global stopping
    stopping = True


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(path, value):
    # Overwritten in place and fsynced, as EventStore's file checkpoints are.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, struct.pack("<q", value), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path):
    with open(path, "rb") as f:
        return struct.unpack("<q", f.read(8))[0]


def chunk_name(number, version):
    return "chunk-%06d.%06d" % (number, version)


def header_bytes(chunk_size, number, scavenged):
    head = struct.pack("<BBiiii", 1, 3, chunk_size, number, number, 1 if scavenged else 0)
    head += uuid.uuid4().bytes
    return head + b"\0" * (HEADER - len(head))


def footer_bytes(physical, data):
    foot = struct.pack("<Biqi", 3, physical, physical, 0)
    foot += b"\0" * (FOOTER - 16 - len(foot))
    return foot + hashlib.md5(data).digest()


def record_bytes(position, data):
    payload = struct.pack("<BBqI", 0, 1, position, len(data)) + data
    payload += hashlib.md5(payload).digest()
    return struct.pack("<i", len(payload)) + payload + struct.pack("<i", len(payload))


def latest_chunks(db):
    latest = {}
    for name in os.listdir(db):
        if not name.startswith("chunk-") or name.endswith(".tmp"):
            continue
        try:
            number, version = (int(p) for p in name[len("chunk-"):].split("."))
        except ValueError:
            continue
        if number not in latest or latest[number] < version:
            latest[number] = version
    return latest


class Index:
    """The index: tables of record positions, the indexmap and the existence filter."""

    def __init__(self, db):
        self.dir = os.path.join(db, "index")
        self.filter_dir = os.path.join(self.dir, "stream-existence")
        os.makedirs(self.filter_dir, exist_ok=True)
        self.filter_dat = os.path.join(self.filter_dir, "streamExistenceFilter.dat")
        self.filter_chk = os.path.join(self.filter_dir, "streamExistenceFilter.chk")
        self.levels = []  # levels[i] = [file names]
        self.checkpoint = 0
        path = os.path.join(self.dir, "indexmap")
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().splitlines()
            self.checkpoint = int(lines[2].split("/")[1])
            for line in lines[4:]:
                level, pos, name = line.split(",")
                level, pos = int(level), int(pos)
                while len(self.levels) <= level:
                    self.levels.append([])
                self.levels[level].append(name)
        if not os.path.exists(self.filter_dat):
            with open(self.filter_dat, "wb") as f:
                f.write(b"\0" * FILTER_BYTES)
                os.fsync(f.fileno())
            write_checkpoint(self.filter_chk, 0)
            fsync_dir(self.filter_dir)

    def write_table(self, positions):
        name = str(uuid.uuid4())
        body = b"PTBL" + struct.pack("<I", len(positions))
        body += b"".join(struct.pack("<q", p) for p in positions)
        body += hashlib.md5(body).digest()
        tmp = os.path.join(self.dir, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.dir, name))
        fsync_dir(self.dir)
        return name

    def read_table(self, name):
        with open(os.path.join(self.dir, name), "rb") as f:
            body = f.read()
        assert hashlib.md5(body[:-16]).digest() == body[-16:], "table %s damaged" % name
        (count,) = struct.unpack_from("<I", body, 4)
        return [struct.unpack_from("<q", body, 8 + 8 * i)[0] for i in range(count)]

    def save_map(self):
        lines = ["2", "%d/%d" % (self.checkpoint, self.checkpoint), "8"]
        for level, names in enumerate(self.levels):
            for pos, name in enumerate(names):
                lines.append("%d,%d,%s" % (level, pos, name))
        rest = ("\n" + "\n".join(lines) + "\n").encode()
        text = hashlib.md5(rest).hexdigest().upper().encode() + rest
        tmp = os.path.join(self.dir, "indexmap.%s.indexmap.tmp" % uuid.uuid4())
        with open(tmp, "wb") as f:
            f.write(text)
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, "indexmap"))
        fsync_dir(self.dir)

    def add(self, positions, checkpoint):
        """Indexes records (all below `checkpoint`), then moves the index checkpoints."""
        name = self.write_table(positions)
        if not self.levels:
            self.levels.append([])
        self.levels[0].append(name)
        self.checkpoint = checkpoint
        self.save_map()
        level = 0
        while level < len(self.levels) and len(self.levels[level]) >= 4:
            old = self.levels[level]
            merged = sorted(p for n in old for p in self.read_table(n))
            new = self.write_table(merged)
            self.levels[level] = []
            if len(self.levels) == level + 1:
                self.levels.append([])
            self.levels[level + 1].append(new)
            self.save_map()
            for n in old:
                os.remove(os.path.join(self.dir, n))
            fsync_dir(self.dir)
            level += 1
        fd = os.open(self.filter_dat, os.O_RDWR)
        try:
            for p in positions:
                bit = filter_bit(p)
                byte = os.pread(fd, 1, bit // 8)[0] | (1 << (bit % 8))
                os.pwrite(fd, bytes([byte]), bit // 8)
            os.fsync(fd)
        finally:
            os.close(fd)
        write_checkpoint(self.filter_chk, checkpoint)


def filter_bit(position):
    return (position * 2654435761) % (FILTER_BYTES * 8)


class Db:
    def __init__(self, db, chunk_size):
        self.db = db
        os.makedirs(db, exist_ok=True)
        self.writer_chk = os.path.join(db, "writer.chk")
        self.chaser_chk = os.path.join(db, "chaser.chk")
        if not os.path.exists(self.writer_chk):
            self.chunk_size = chunk_size
            self.new_chunk(0)
            write_checkpoint(os.path.join(db, "epoch.chk"), 0)
            write_checkpoint(os.path.join(db, "truncate.chk"), -1)
            write_checkpoint(self.chaser_chk, 0)
            write_checkpoint(self.writer_chk, 0)
            fsync_dir(db)
        latest = latest_chunks(db)
        self.number = max(latest)
        path = os.path.join(db, chunk_name(self.number, latest[self.number]))
        self.fd = os.open(path, os.O_RDWR)
        (self.chunk_size,) = struct.unpack("<i", os.pread(self.fd, 6, 0)[2:6])
        self.writer = read_checkpoint(self.writer_chk)
        self.chaser = read_checkpoint(self.chaser_chk)
        assert self.writer // self.chunk_size == self.number, "writer.chk is not in the last chunk"
        self.index = Index(db)
        # Records the chaser passed that are not indexed yet.
        self.unindexed = list(self.walk(self.index.checkpoint, self.chaser))

    def new_chunk(self, number):
        path = os.path.join(self.db, chunk_name(number, 0))
        with open(path, "wb") as f:
            f.write(header_bytes(self.chunk_size, number, False))
            f.truncate(HEADER + self.chunk_size + FOOTER)
            os.fsync(f.fileno())
        fsync_dir(self.db)

    def append(self, data):
        record = record_bytes(self.writer, data)
        local = self.writer - self.number * self.chunk_size
        if local + len(record) > self.chunk_size:
            self.complete_chunk(local)
            local = 0
            record = record_bytes(self.writer, data)
        os.pwrite(self.fd, record, HEADER + local)
        self.writer += len(record)

    def complete_chunk(self, physical):
        data = os.pread(self.fd, physical, HEADER)
        os.pwrite(self.fd, footer_bytes(physical, data), HEADER + self.chunk_size)
        os.fsync(self.fd)
        os.close(self.fd)
        self.number += 1
        self.new_chunk(self.number)
        self.fd = os.open(os.path.join(self.db, chunk_name(self.number, 0)), os.O_RDWR)
        # Only now may writer.chk point into the new chunk.
        self.writer = self.number * self.chunk_size
        write_checkpoint(self.writer_chk, self.writer)

    def flush(self):
        """Makes the appended records durable, then advances writer.chk."""
        os.fsync(self.fd)
        write_checkpoint(self.writer_chk, self.writer)

    def walk(self, start, end):
        """Reads back and checks every record in [start, end); yields their positions."""
        position = start
        current = None  # (chunk number, file contents, physical data end or None)
        while position < end:
            number = position // self.chunk_size
            local = position - number * self.chunk_size
            if current is None or current[0] != number:
                latest = latest_chunks(self.db)
                with open(os.path.join(self.db, chunk_name(number, latest[number])), "rb") as f:
                    body = f.read()
                foot = body[-FOOTER:]
                data_end = struct.unpack_from("<i", foot, 1)[0] if foot[0] & 1 else None
                current = (number, body, data_end)
            _, body, data_end = current
            if (data_end is not None and local >= data_end) or local + 8 > self.chunk_size:
                position = (number + 1) * self.chunk_size
                continue
            (length,) = struct.unpack_from("<i", body, HEADER + local)
            if length == 0:
                position = (number + 1) * self.chunk_size
                continue
            payload = body[HEADER + local + 4:HEADER + local + 4 + length]
            (suffix,) = struct.unpack_from("<i", body, HEADER + local + 4 + length)
            assert suffix == length, "record at %d: prefix %d != suffix %d" % (position, length, suffix)
            assert hashlib.md5(payload[:-16]).digest() == payload[-16:], "record at %d damaged" % position
            (logpos,) = struct.unpack_from("<q", payload, 2)
            assert logpos == position, "record at %d says %d" % (position, logpos)
            yield position
            position += 8 + length

    def chase(self, target, index_every):
        """The chaser reads back up to `target`, then the index takes what it passed."""
        self.unindexed.extend(self.walk(self.chaser, target))
        self.chaser = target
        write_checkpoint(self.chaser_chk, self.chaser)
        if len(self.unindexed) >= index_every:
            self.index.add(self.unindexed, self.chaser)
            self.unindexed = []

    def scavenge(self, rng):
        latest = latest_chunks(self.db)
        completed = [n for n in latest if n < self.number]
        if not completed:
            return
        number = rng.choice(completed)
        version = latest[number]
        old = os.path.join(self.db, chunk_name(number, version))
        with open(old, "rb") as f:
            body = f.read()
        foot = body[-FOOTER:]
        physical = struct.unpack_from("<i", foot, 1)[0]
        data = body[HEADER:HEADER + physical]
        tmp = os.path.join(self.db, "%s.scavenge.tmp" % uuid.uuid4())
        with open(tmp, "wb") as f:
            f.write(header_bytes(self.chunk_size, number, True) + data + footer_bytes(physical, data))
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.db, chunk_name(number, version + 1)))
        fsync_dir(self.db)
        os.remove(old)
        fsync_dir(self.db)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--chunk-size", type=int, default=256 * 1024)
    parser.add_argument("--records", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--stop-file")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--min-size", type=int, default=64)
    parser.add_argument("--max-size", type=int, default=2048)
    parser.add_argument("--interval-ms", type=float, default=2.0)
    parser.add_argument("--index-every", type=int, default=64)
    parser.add_argument("--scavenge-every", type=int, default=0, help="batches (0: never)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(args.seed)
    db = Db(args.db, args.chunk_size)
    written = 0
    batches = 0
    ready = False
    while not stopping:
        previous = db.writer
        for _ in range(args.batch):
            if args.records and written >= args.records:
                break
            db.append(rng.randbytes(rng.randint(args.min_size, args.max_size)))
            written += 1
        db.flush()
        # One batch behind the writer, as the chaser trails it.
        db.chase(previous, args.index_every)
        batches += 1
        if args.scavenge_every and batches % args.scavenge_every == 0:
            db.scavenge(rng)
        if not ready:
            print("ready", flush=True)
            ready = True
        if args.records and written >= args.records:
            break
        if args.stop_file and os.path.exists(args.stop_file):
            break
        if args.interval_ms:
            time.sleep(args.interval_ms / 1000.0)
    db.flush()
    print("stopped at writer=%d chaser=%d records=%d" % (db.writer, db.chaser, written), flush=True)


if __name__ == "__main__":
    sys.exit(main())
