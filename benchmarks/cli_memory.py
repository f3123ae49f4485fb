"""Peak memory (RSS) of `python -m spherejax simulate --n N --t1 5`, measured in a
child process (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, one child per
size, so each figure is that run's own peak).

The summaries (energy of every saved state) are computed a few states at a time,
so the peak grows like n^2 (one attention matrix at a time), not like
saves x n^2. Usage: `python benchmarks/cli_memory.py [--n 1500,4000]`; prints one
line per size, with the hardware and the date.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_gib(n: int, t1: float = 5.0) -> tuple[float, float, int]:
    """(peak RSS in GiB, seconds, exit code) of one `simulate` run in a child."""
    with tempfile.TemporaryDirectory() as out:
        code = (
            "import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print(kib, p.returncode)\n"
        )
        command = [sys.executable, "-m", "spherejax", "simulate", "--n", str(n)]
        command += ["--t1", str(t1), "--out", out]
        tic = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", code, *command],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        seconds = time.perf_counter() - tic
        kib, returncode = result.stdout.split()
        return int(kib) / 2**20, seconds, int(returncode)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", default="1500,4000")
    args = parser.parse_args()
    print(
        f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}; simulate --t1 5 (201 saves, float32)"
    )
    for n in [int(v) for v in args.n.split(",")]:
        gib, seconds, code = peak_rss_gib(n)
        print(f"n = {n:6d}: peak RSS {gib:.2f} GiB, {seconds:.0f} s, exit {code}")


if __name__ == "__main__":
    main()
