#!/usr/bin/env python3
"""Where a command's threads wait, weighted by time: runs it under
`perf record -e sched:sched_switch --call-graph dwarf`, pairs each thread's switch out (asleep
or in I/O) with its next switch in, and sums the time off the CPU by thread name, state and the
innermost frames of Backstop's own code on the stack at the switch out.

    python3 bench/offcpu.py [--top N] [--frames K] -- COMMAND ARGS...

`perf sched timehist` gives the totals per thread; this says what the waiting was for (a
channel, a lock, a direct write, a read). States: S asleep (a lock, a channel, a condition
variable), D in the kernel waiting for I/O. Time a thread was runnable but not running is not
counted (that is CPU contention, not waiting).
"""

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SWITCH = re.compile(
    r"\s*\d+\s+([\d.]+): prev_comm=(\S+) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) "
    r"==> next_comm=\S+ next_pid=(\d+)"
)


def switches(script_output):
    """(time, thread name, tid switched out, its state, tid switched in, stack) per event."""
    event = None
    for line in script_output.splitlines():
        m = SWITCH.match(line)
        if m:
            if event:
                yield event
            event = (float(m[1]), m[2], int(m[3]), m[4], int(m[5]), [])
        elif event and line.strip():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                event[5].append(parts[1].split("+0x")[0])
    if event:
        yield event


def off_cpu(events, frames):
    """Seconds off the CPU by (thread name, state, our frames), and by thread."""
    asleep = {}
    by_site = collections.Counter()
    by_thread = collections.Counter()
    for time, comm, prev, state, nxt, stack in events:
        if nxt in asleep:
            since, name, site = asleep.pop(nxt)
            by_site[site] += time - since
            by_thread[(nxt, name)] += time - since
        if not state.startswith("R"):
            # Functions of ours, not closures or generics that merely mention a type of ours.
            ours = [f for f in stack if f.startswith("backstop::") and "(inlined)" not in f][:frames]
            asleep[prev] = (time, comm, (comm, state, " <- ".join(ours) or " <- ".join(stack[:2])))
    return by_site, by_thread


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=15, help="wait sites to print (default 15)")
    ap.add_argument("--frames", type=int, default=3, help="frames of our code per site (default 3)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "switches.data"
        record = ["perf", "record", "-q", "-e", "sched:sched_switch", "--call-graph", "dwarf,16384"]
        subprocess.run(record + ["-o", str(data), "--"] + command, check=True)
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "tid,time,trace,ip,sym"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    by_site, by_thread = off_cpu(switches(script), args.frames)
    print("off the CPU, by thread:")
    for (tid, name), seconds in by_thread.most_common():
        print(f"  {seconds * 1000:8.1f} ms  {name}[{tid}]")
    print("\nby wait site (thread name, state, innermost frames of our code):")
    for (name, state, site), seconds in by_site.most_common(args.top):
        print(f"  {seconds * 1000:8.1f} ms  {name:15} {state}  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
