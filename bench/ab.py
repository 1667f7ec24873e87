#!/usr/bin/env python3
"""A/B of two backstop builds on one command: alternating runs under the harness's conditions.

    python3 bench/ab.py --a OLD --b NEW --repo R --fresh --warm DATA -n 4 -- backup DATA
    python3 bench/ab.py --a OLD --b NEW --repo R --clean T --warm R --prefault-extra 1536 --sync -n 8 -- restore latest T

Each run: (with --clean) remove that directory; (with --fresh) a new repository at --repo,
untimed; `sync`; as root, drop the clean page cache; read the --warm paths once; on a guest that
reports free pages to its host, touch and free memory (bench/run.py's `prefault`: the --warm
bytes and --prefault-extra MiB, which for a restore should cover what it writes); then the
timed `BIN --repo R -q ARGS` (with --sync, until a `sync` after it returns). The builds alternate
and the one that goes first changes every round. Prints every run, then per build the mean,
least and most wall time, the mean CPU time and the highest peak RSS, and B's mean over A's.

This is how the numbers of bench/README's "Where the time goes" entries are measured; the full
comparison with the peers is bench/run.py.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import prefault, read_tree, tree_bytes  # noqa: E402

GNU_TIME = Path("/usr/bin/time")


def prepare(args, binary, env):
    if args.clean:
        shutil.rmtree(args.clean, ignore_errors=True)
    if args.fresh:
        shutil.rmtree(args.repo, ignore_errors=True)
        subprocess.run([binary, "--repo", args.repo, "-q", "init"], env=env, check=True)
    subprocess.run(["sync"], check=True)
    if not args.no_drop and os.geteuid() == 0:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    warm = 0
    for path in args.warm:
        read_tree(path)
        warm += tree_bytes(path)
    if not args.no_prefault and Path("/sys/module/page_reporting").exists():
        prefault(warm + (args.prefault_extra << 20))


def timed(args, binary, env):
    """Wall seconds, CPU seconds and peak RSS in MiB (None without GNU time) of one run."""
    argv = [binary, "--repo", args.repo, "-q", *args.command]
    with tempfile.NamedTemporaryFile("r") as out:
        if GNU_TIME.exists():
            argv = [str(GNU_TIME), "-f", "%U %S %M", "-o", out.name, *argv]
        start = time.monotonic()
        subprocess.run(argv, env=env, check=True)
        if args.sync:
            subprocess.run(["sync"], check=True)
        wall = time.monotonic() - start
        fields = out.read().split()
    if len(fields) == 3:
        return wall, float(fields[0]) + float(fields[1]), int(fields[2]) / 1024
    return wall, None, None


def summary(label, runs):
    walls = [r[0] for r in runs]
    cpus = [r[1] for r in runs if r[1] is not None]
    rss = [r[2] for r in runs if r[2] is not None]
    line = f"{label}: wall mean {statistics.mean(walls):.3f} s (least {min(walls):.3f}, most {max(walls):.3f})"
    if cpus:
        line += f", CPU mean {statistics.mean(cpus):.3f} s, peak RSS {max(rss):.1f} MiB"
    return line


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--a", required=True, help="the first backstop binary (the baseline)")
    ap.add_argument("--b", required=True, help="the second backstop binary")
    ap.add_argument("--repo", required=True, help="the repository every run uses")
    ap.add_argument("--fresh", action="store_true", help="a new repository before every run")
    ap.add_argument("--clean", help="a directory removed before every run (a restore's target)")
    ap.add_argument("--warm", nargs="*", default=[], help="paths read once before every run")
    ap.add_argument("--sync", action="store_true", help="time until a `sync` after the run returns")
    ap.add_argument("-n", "--rounds", type=int, default=4, help="runs of each build (default 4)")
    ap.add_argument("--no-drop", action="store_true", help="do not drop the page cache")
    ap.add_argument("--no-prefault", action="store_true", help="never touch and free memory")
    ap.add_argument(
        "--prefault-extra",
        type=int,
        default=512,
        metavar="MIB",
        help="MiB to touch beyond the --warm bytes (default 512; bench/run.py touches the data "
        "set's size plus 512 MiB, which a restore of the whole data set needs too)",
    )
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then backstop's arguments")
    args = ap.parse_args()
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        ap.error("no backstop command given (after --)")
    env = dict(os.environ)
    env.setdefault("BACKSTOP_PASSWORD", "ab-password")

    builds = {"A": args.a, "B": args.b}
    runs = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for label in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            prepare(args, builds[label], env)
            wall, cpu, rss = timed(args, builds[label], env)
            runs[label].append((wall, cpu, rss))
            extra = f", CPU {cpu:.2f} s, peak RSS {rss:.1f} MiB" if cpu is not None else ""
            print(f"round {round_ + 1} {label}: {wall:.3f} s{extra}", flush=True)
    print(summary("A", runs["A"]))
    print(summary("B", runs["B"]))
    ratio = statistics.mean(r[0] for r in runs["B"]) / statistics.mean(r[0] for r in runs["A"])
    print(f"B/A wall: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
