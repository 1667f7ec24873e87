#!/usr/bin/env python3
"""Concurrent write load for the SQLite backup tests and benchmark: a separate process.

Usage: sqlite_writer.py DB_PATH [SEED]

The database must already hold the bank schema (backstop_source::sqlite::workload::create_bank):
`accounts(id, balance, pad)` and `transfers(seq, from_id, to_id, amount)`. Each transaction moves
an amount between two accounts and appends to `transfers`, so the sum of balances is constant and
`max(transfers.seq)` is the sequence committed last, both in the same transaction.

Runs until its stdin is closed (the parent closes it, or dies), then prints one JSON line to
stdout: {"transactions": n, "max_txn_ms": ..., "max_seq": ...}. `max_txn_ms` is the longest a
single transaction took from BEGIN to COMMIT, busy waits included: how long a backup blocked it.
The journal mode is the database's own; this script never changes it.
"""

import json
import random
import sqlite3
import sys
import threading
import time


def main():
    path = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = random.Random(seed)

    stop = threading.Event()

    def wait_for_eof():
        # The parent stops us by closing our stdin; this also stops us if the parent dies.
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()

    # isolation_level=None: the module issues no implicit BEGIN/COMMIT; we write them ourselves.
    conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    (accounts,) = conn.execute("SELECT count(*) FROM accounts").fetchone()
    if accounts < 2:
        sys.exit("sqlite_writer: the database needs at least two accounts")

    transactions = 0
    max_txn = 0.0
    last_seq = 0
    # Tell the parent we are running (it may also just poll max(seq)).
    print(json.dumps({"ready": True}), flush=True)
    while not stop.is_set():
        src = rng.randint(1, accounts)
        dst = rng.randint(1, accounts - 1)
        if dst >= src:
            dst += 1
        amount = rng.randint(1, 100)
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src))
            conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst))
            cur = conn.execute(
                "INSERT INTO transfers(from_id, to_id, amount) VALUES (?, ?, ?)",
                (src, dst, amount),
            )
            seq = cur.lastrowid
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        max_txn = max(max_txn, time.monotonic() - started)
        transactions += 1
        last_seq = seq
    conn.close()
    print(
        json.dumps(
            {"transactions": transactions, "max_txn_ms": max_txn * 1000.0, "max_seq": last_seq}
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
