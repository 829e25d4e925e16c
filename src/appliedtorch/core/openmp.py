"""How torch's idle OpenMP threads wait, decided by each entry point (stage, CLI, benchmark) as
its first statement, before torch loads its OpenMP runtime (libgomp reads OMP_WAIT_POLICY and
GOMP_SPINCOUNT once, as it loads). Importing this module decides nothing.

- **spin** (libgomp's default, the one every torch user gets: a thread spins about 3 ms before it
  sleeps), when the run queue leaves a core for each of torch's threads: no other process wants
  them, and a woken thread would only cost time.
- **passive** (`OMP_WAIT_POLICY=PASSIVE`: threads sleep at once) when other processes are
  runnable: a spinning thread would take their core and lose its own turn when it has work.
- A setting of yours (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` in the environment) is kept.

The decision holds for the whole process: libgomp cannot change it later, so a process that
becomes busy after its start keeps spinning (docs/performance.md measures both sides; set
`OMP_WAIT_POLICY=PASSIVE` for runs you start side by side). It changes no number, only the time.

    from appliedtorch.core import openmp

    openmp.settle()  # first, before anything imports torch
    ...
    openmp.decision().tag()  # e.g. 'spin (no other runnable process; 2 threads on 2 CPUs)'
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
# What appliedtorch decided in this environment: a child process (a stage's subprocess) sees the
# mark, knows the policy is not the user's and decides for itself.
MARK = "APPLIEDTORCH_OPENMP_WAIT"
SAMPLES, INTERVAL = 5, 0.004  # run-queue readings, seconds apart: a short burst is outvoted


@dataclass(frozen=True)
class Decision:
    """`policy`: 'spin', 'passive', 'yours' (the environment's) or 'preset' (torch loaded
    before appliedtorch, with the environment it found); `why`: what decided it, in words."""

    policy: str
    why: str

    def tag(self) -> str:
        """One line for the run's tags and the logs."""
        return f"{self.policy} ({self.why})"


def others_runnable(
    samples: int = SAMPLES, interval: float = INTERVAL, stat: str = "/proc/stat"
) -> int | None:
    """Runnable tasks on the machine besides this process (the median of `samples` readings of
    the kernel's run queue); None where there is no /proc/stat to read."""
    counts = []
    for i in range(samples):
        try:
            with open(stat) as f:
                running = next(int(ln.split()[1]) for ln in f if ln.startswith("procs_running"))
        except (OSError, StopIteration, ValueError, IndexError):
            return None
        counts.append(running - 1)  # this process, reading
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, round(statistics.median(counts)))


def cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_threads(environ: MutableMapping[str, str], available: int) -> int:
    """The intra-op threads torch will start with: OMP_NUM_THREADS (its first level) if set
    and valid, else one per CPU at most."""
    try:
        return max(1, min(available, int(environ.get("OMP_NUM_THREADS", "").split(",")[0])))
    except ValueError:
        return available


def decide(
    environ: MutableMapping[str, str],
    runnable: Callable[[], int | None] = others_runnable,
    available: int | None = None,
) -> Decision:
    """Decide and set `environ` for it (PASSIVE, or nothing for libgomp's spinning default),
    leaving a setting of the user's as it is."""
    mark = environ.pop(MARK, None)
    if mark == "passive" and environ.get(POLICY) == "PASSIVE":
        del environ[POLICY]  # a parent appliedtorch's, not the user's: decide again here
    if user := _settings(environ):
        return Decision("yours", user)
    available = cpus() if available is None else available
    threads = torch_threads(environ, available)
    others = runnable()
    where = f"{threads} thread{'s' * (threads > 1)} on {available} CPU{'s' * (available > 1)}"
    if others is None:
        policy, why = "passive", f"no run queue to read; {where}"
    elif threads < 2:
        policy, why = "passive", f"{where}: no thread waits for another"
    elif others + threads > available:
        policy, why = "passive", f"{others} other runnable task{'s' * (others > 1)}; {where}"
    else:
        policy, why = "spin", f"no other runnable process; {where}"
    if policy == "passive":
        environ[POLICY] = "PASSIVE"
    environ[MARK] = policy
    return Decision(policy, why)


_decided: Decision | None = None


def settle() -> Decision:
    """Decide this process's wait, once; entry points call it before anything imports torch."""
    global _decided
    if _decided is None:
        if "torch" in sys.modules:  # its OpenMP already read the environment: nothing to decide
            found = _settings(os.environ) or "neither set"
            _decided = Decision("preset", f"torch was imported first, with {found}")
        else:
            _decided = decide(os.environ)
    return _decided


def decision() -> Decision:
    """What `settle` decided; a process whose entry point never called it (a notebook, a
    library user) runs with the environment it was given, which is what this says."""
    if _decided is not None:
        return _decided
    return Decision("unset", _settings(os.environ) or "not decided by appliedtorch")


def _settings(environ: MutableMapping[str, str]) -> str:
    """The wait settings `environ` gives libgomp, as `NAME=value, ...` ('' for none)."""
    return ", ".join(f"{k}={environ[k]}" for k in (POLICY, SPIN_COUNT) if k in environ)
