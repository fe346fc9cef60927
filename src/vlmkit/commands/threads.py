"""How torch's threads wait, chosen once as a command that runs a model starts (before torch is imported).

torch runs one intra-op thread per core, and at the end of each parallel region OpenMP's threads spin,
waiting for the others. On cores that other processes keep busy, the thread they wait for is often not
running, and the spinning burns the CPU time it needs: a training step of `vlmkit demo` took 17 s instead
of 0.06 s beside other jobs on 2 cores, and 0.35-0.8 s with the threads sleeping while they wait
(OMP_WAIT_POLICY=passive), faster than with one thread (0.7-2.1 s); benchmarks/RESULTS.md, "A busy
machine". Sleeping threads use only the CPU time the work needs, so a busy machine costs vlmkit (and costs
the others) a fair share. A user's OMP_WAIT_POLICY or OMP_NUM_THREADS is kept.
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


def choose_wait_policy(environ: dict[str, str] | None = None, busy: float | None = None) -> None:
    """Set OMP_WAIT_POLICY=passive (read by torch's OpenMP at import) when other processes use at least 3/4
    of a core and the user has set neither it nor OMP_NUM_THREADS; on a quiet machine nothing is set
    (spinning is the fastest there)."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ or "OMP_NUM_THREADS" in environ:
        return
    if (busy_cores() if busy is None else busy) >= 0.75:
        environ["OMP_WAIT_POLICY"] = "passive"
