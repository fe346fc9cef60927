"""How many threads torch computes with, chosen once as a command that runs a model starts (before torch is
imported).

torch runs one intra-op thread per core, and each parallel region waits at an OpenMP barrier for all of
them. On cores that other processes keep busy, one of those threads is often not running, and every
region waits for it: a step of `vlmkit demo`'s training took 17 s instead of 0.06 s beside other jobs on 2
cores (benchmarks/RESULTS.md, "A busy machine"). With as many threads as cores are free, a busy machine
costs vlmkit its fair share instead. A thread count the user set (OMP_NUM_THREADS; torchrun sets it for
several processes) is always kept.
"""

from __future__ import annotations

import os
import time

COMMANDS = {"sft", "infer", "eval", "serve", "demo", "export"}  # the commands that run a model
SAMPLE_SECONDS = 0.1  # how long the cores' use by others is measured at start


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores' worth of CPU time other processes used during the last `seconds` (from /proc/stat); the 1-minute
    load average where there is no /proc/stat."""

    def times() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    try:
        total, idle = times()
        time.sleep(seconds)
        total2, idle2 = times()
    except OSError:
        return os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    return cores * (1 - (idle2 - idle) / max(1, total2 - total))


def free_cores(cores: int, busy: float) -> int:
    """Cores left by processes that use `busy` cores' worth of CPU (a core counts as taken from 3/4 used)."""
    return max(1, min(cores, cores - int(busy + 0.25)))


def choose_threads(environ: dict[str, str] | None = None, cores: int | None = None, busy: float | None = None) -> None:
    """On a busy machine, set OMP_NUM_THREADS (read by torch at import) to the free cores and OMP_WAIT_POLICY
    to passive (threads sleep at a barrier instead of spinning on cores others need), unless the user set
    them; on a quiet machine nothing is set (torch's default: one thread per core, spinning, the fastest
    there)."""
    environ = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" in environ:
        return
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    threads = free_cores(cores, busy_cores() if busy is None else busy)
    if threads < cores:
        environ["OMP_NUM_THREADS"] = str(threads)
        environ.setdefault("OMP_WAIT_POLICY", "passive")
