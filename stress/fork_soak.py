"""Forks a busy process again and again; every child must use Raptors (a
fresh pool, awaited from a loop of its own) and exit within a bound.

    python stress/fork_soak.py --forks 300

Each round: a pool in the parent is kept busy by an awaiting loop, the loop
forks, the child awaits 200 jobs on a new pool from a new thread's loop,
the parent awaits 500 of its own meanwhile. A child that does not exit
within 8 s is reported with its native stacks (gdb, when installed) and the
run fails; so does a child that crashes. Prints the forks survived.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings

import raptors as rp


def exit_code_of(pid: int, bound: float) -> int:
    deadline = time.monotonic() + bound
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            if shutil.which("gdb"):
                stacks = subprocess.run(
                    ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 30"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                print(stacks.stdout[-20000:], file=sys.stderr)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.005)
    return os.waitstatus_to_exitcode(done[1])


async def child() -> None:
    fresh = rp.Pool("fork-soak-child", threads=1, queue=8)
    for i in range(200):
        assert await fresh.submit(abs, -i) == i
    fresh.close()


async def round_trip(n: int) -> int:
    pool = rp.Pool(f"fork-soak-{n}", threads=2, queue=64)
    assert await pool.submit(abs, -1) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:
        thread = threading.Thread(target=lambda: asyncio.run(child()))
        thread.start()
        thread.join(7)
        os._exit(3 if thread.is_alive() else 0)
    for i in range(500):
        assert await pool.submit(abs, -i) == i
    code = await asyncio.to_thread(exit_code_of, pid, 8.0)
    pool.close()
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--forks", type=int, default=300)
    args = parser.parse_args()
    for n in range(args.forks):
        code = asyncio.run(round_trip(n))
        if code != 0:
            sys.exit(f"fork {n}: child exit code {code}")
    print(f"{args.forks} forks from a busy loop: every child served and exited")


if __name__ == "__main__":
    main()
