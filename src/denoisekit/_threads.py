"""How many CPU threads a command uses, and OpenMP's wait policy: so that a busy core costs its share.

No torch here: :func:`openmp_env` must run before torch (and so its OpenMP runtime) is loaded.
Numbers: ``benchmarks/RESULTS.md``, "Threads on a busy machine".
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

#: What a user may set to choose the wait policy themselves; any of them present and we leave it alone.
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def openmp_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The OpenMP variables to add to ``environ`` before torch loads: a passive wait policy unless the user
    chose one. torch's CPU wheel uses GNU OpenMP, whose threads otherwise spin after each parallel region;
    beside a busy core they spin while the thread they wait for has no core."""
    return {} if any(k in environ for k in WAIT_VARS) else {"OMP_WAIT_POLICY": "PASSIVE"}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_jiffies() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies of all CPUs since boot from ``/proc/stat``, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user time
    return total - idle, total


def busy_cpus(window: float = 0.2) -> float:
    """How many CPUs other processes keep busy now: the busy share of all CPUs over ``window`` seconds
    (``/proc/stat``), less this process's own CPU time; the 1-minute load average where there is no
    ``/proc/stat``."""
    first = _cpu_jiffies()
    if first is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    own = time.process_time()
    time.sleep(window)
    second = _cpu_jiffies()
    own = time.process_time() - own
    assert second is not None
    busy, total = second[0] - first[0], second[1] - first[1]
    if total <= 0:
        return 0.0
    ncpu = os.cpu_count() or 1
    return max(0.0, busy / total * ncpu - own / window)


def default_threads(cpus: int | None = None, busy: float | None = None, limit: int | None = None) -> int:
    """Torch threads for a command that did not say: one per CPU not kept busy by another process, at most
    ``limit`` (torch's own count: physical cores), at least one (``cpus``: :func:`usable_cpus`; ``busy``:
    :func:`busy_cpus`; a CPU counts as busy from half use). A thread that shares its core with a busy
    process holds every parallel region up, so it costs more than it brings."""
    cpus = usable_cpus() if cpus is None else cpus
    busy = busy_cpus() if busy is None else busy
    return max(1, min(cpus if limit is None else limit, cpus - int(busy + 0.5)))
