#!/usr/bin/env python3
"""A transactional Berkeley DB writer and checker for Backstop's bdb tests.

`run` opens (and, as the only process allowed to, recovers) an environment and commits, until
stopped, transactions that each move an amount between two accounts (the total never changes),
add one history record and increment a sequence number, with a synchronous commit. After every
commit it publishes the committed sequence number in a file (written to a temporary name and
renamed), so a test can read the sequence committed before a backup starts. It checkpoints often
and keeps its log files small so that logs rotate and pages are written while backups run.

`check` opens a restored, already recovered environment (privately: no region files are left)
and prints one JSON line: the sequence, the sum of the balances, the number of accounts and of
history records. It never recovers.
"""

import argparse
import json
import os
import random
import signal
import sys
import time

from berkeleydb import db

INITIAL_BALANCE = 1000
ENV_FLAGS = db.DB_CREATE | db.DB_INIT_TXN | db.DB_INIT_LOCK | db.DB_INIT_LOG | db.DB_INIT_MPOOL


def write_db_config(home, data_dir, lg_max):
    """Puts the environment's settings in DB_CONFIG, so every tool that opens it agrees."""
    path = os.path.join(home, "DB_CONFIG")
    if os.path.exists(path):
        return
    lines = [f"set_lg_max {lg_max}", "set_cachesize 0 262144 1"]
    if data_dir:
        os.makedirs(os.path.join(home, data_dir), exist_ok=True)
        lines.append(f"set_data_dir {data_dir}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def publish(path, seq):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{seq}\n")
    os.replace(tmp, path)


def acct_key(i):
    return b"acct:%06d" % i


def run(args):
    os.makedirs(args.home, exist_ok=True)
    write_db_config(args.home, args.data_dir, args.lg_max)
    env = db.DBEnv()
    env.open(args.home, ENV_FLAGS | db.DB_RECOVER)
    accounts = db.DB(env)
    history = db.DB(env)
    txn = env.txn_begin()
    accounts.open("accounts.db", dbtype=db.DB_BTREE, flags=db.DB_CREATE, txn=txn)
    history.open("history.db", dbtype=db.DB_BTREE, flags=db.DB_CREATE, txn=txn)
    if accounts.get(b"seq", txn=txn) is None:
        for i in range(args.accounts):
            accounts.put(acct_key(i), b"%d" % INITIAL_BALANCE, txn=txn)
        accounts.put(b"seq", b"0", txn=txn)
    txn.commit()
    n_accounts = sum(1 for k in accounts.keys() if k.startswith(b"acct:"))
    seq = int(accounts.get(b"seq"))
    publish(args.seq_file, seq)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.max_seconds
    last_checkpoint = time.monotonic()
    pad = b"x" * args.history_bytes
    while not stop and time.monotonic() < deadline:
        a, b = rng.sample(range(n_accounts), 2)
        amount = rng.randint(1, 50)
        txn = env.txn_begin()
        try:
            bal_a = int(accounts.get(acct_key(a), txn=txn, flags=db.DB_RMW))
            bal_b = int(accounts.get(acct_key(b), txn=txn, flags=db.DB_RMW))
            accounts.put(acct_key(a), b"%d" % (bal_a - amount), txn=txn)
            accounts.put(acct_key(b), b"%d" % (bal_b + amount), txn=txn)
            next_seq = int(accounts.get(b"seq", txn=txn, flags=db.DB_RMW)) + 1
            accounts.put(b"seq", b"%d" % next_seq, txn=txn)
            history.put(b"%012d" % next_seq, b"%d>%d:%d:" % (a, b, amount) + pad, txn=txn)
        except BaseException:
            txn.abort()
            raise
        txn.commit()  # synchronous: the environment has no DB_TXN_NOSYNC
        seq = next_seq
        publish(args.seq_file, seq)
        now = time.monotonic()
        if now - last_checkpoint >= args.checkpoint_seconds:
            env.txn_checkpoint(0, 0)
            last_checkpoint = now
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000.0)
    accounts.close()
    history.close()
    env.close()
    return 0


def check(args):
    env = db.DBEnv()
    # The environment was recovered by db_recover; this process must not recover it again.
    # DB_PRIVATE keeps the regions in this process, so no __db.* file is left behind to make a
    # standby look open.
    env.open(args.home, ENV_FLAGS | db.DB_PRIVATE)
    accounts = db.DB(env)
    history = db.DB(env)
    accounts.open("accounts.db", dbtype=db.DB_BTREE, flags=db.DB_RDONLY)
    history.open("history.db", dbtype=db.DB_BTREE, flags=db.DB_RDONLY)
    total = 0
    n_accounts = 0
    for key, value in accounts.items():
        if key.startswith(b"acct:"):
            total += int(value)
            n_accounts += 1
    seq_raw = accounts.get(b"seq")
    n_history = len(history.keys())
    accounts.close()
    history.close()
    env.close()
    print(json.dumps({
        "seq": int(seq_raw) if seq_raw is not None else -1,
        "total": total,
        "accounts": n_accounts,
        "expected_total": n_accounts * INITIAL_BALANCE,
        "history": n_history,
    }))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="commit transfers until SIGTERM or --max-seconds")
    r.add_argument("--home", required=True)
    r.add_argument("--seq-file", required=True)
    r.add_argument("--accounts", type=int, default=500)
    r.add_argument("--data-dir", default=None, help="set_data_dir, relative to the home")
    r.add_argument("--lg-max", type=int, default=256 * 1024)
    r.add_argument("--history-bytes", type=int, default=200)
    r.add_argument("--checkpoint-seconds", type=float, default=0.5)
    r.add_argument("--max-seconds", type=float, default=300.0)
    r.add_argument("--pause-ms", type=float, default=0.0)
    r.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("check", help="print the state of a recovered environment as JSON")
    c.add_argument("--home", required=True)
    args = parser.parse_args()
    return run(args) if args.command == "run" else check(args)


if __name__ == "__main__":
    sys.exit(main())
