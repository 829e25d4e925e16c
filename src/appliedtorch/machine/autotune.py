"""Choose between candidates by timing them on this machine, and remember the choice.

    >>> steps = {"float32": lambda: step(bf16=False), "bfloat16": lambda: step(bf16=True)}
    >>> tuned = pick_fastest("bf16", steps, device=torch.device("cpu"), shape_key="mlp b64")
    >>> tuned.choice, tuned.seconds, tuned.cached  # the name kept, seconds per step of each

Each candidate is a callable that runs one real step of the work to be tuned. The candidates are
warmed up first (oneDNN builds its kernels per shape and format on first use, Adam makes its
state), then timed in alternation, round after round, so a change in the machine's load hits
them alike; each one's figure is the median of its steps and the faster is kept. Flags cannot
decide this: on one CPU with native bf16 it was faster, on another with the same flags slower.

The decision is cached in one small JSON file per user, keyed by the machine (`machine_signature`),
torch's version, the question and the caller's `shape_key`, so later runs on the same machine skip
the probe. The file lives in $APPLIEDTORCH_CACHE_DIR, else $XDG_CACHE_HOME/appliedtorch, else
~/.cache/appliedtorch. It is advice, never trusted: a file too large, not JSON, or naming a
choice that is not a candidate is ignored and the probe runs again. Deleting it forgets every
decision. Two processes writing at once lose at most one entry (each write is atomic), which
only costs a probe later.

A choice can change the numbers a run computes (bf16 or fp32, a thread count's reduction order),
so it is made once per machine and kept. With `busy_load`, a machine busier than that (1-minute
load average, read before and after timing) cannot time the candidates fairly: another process's
work skews them, most of all those that use more threads. Such a run uses the cached choice, or
else the exact default (`default`, else the first candidate, which callers make fp32), says so in
one line and caches nothing; a quiet run later times the candidates and keeps its choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from appliedtorch.core.utils import write_json
from appliedtorch.machine.hardware import machine_signature

log = logging.getLogger(__name__)

CACHE_ENV = "APPLIEDTORCH_CACHE_DIR"
# Set to 0/off/false/no to decide `auto` without timing (as before measuring: by the hardware's
# flags): runs that must give the same numbers on a busy machine, and short test runs.
ENABLE_ENV = "APPLIEDTORCH_AUTOTUNE"
CACHE_FILE = "autotune.json"
# A cache holds one short entry per (machine, question, shape): kilobytes. Anything larger is
# not ours and is not read.
MAX_CACHE_BYTES = 256 * 1024
MAX_ENTRIES = 256  # the oldest measurements are dropped beyond this


@dataclass(frozen=True)
class Tuned:
    """The outcome of `pick_fastest`."""

    choice: str  # the kept candidate's name
    seconds: dict[str, float]  # median seconds per step of each candidate, as measured
    probe_seconds: float  # wall time of the probe in this process (0 when cached)
    cached: bool  # True: read from the cache, nothing was timed now
    load: float | None = None  # the 1-minute load average when it was timed (None: unknown)
    busy: bool = False  # True: too busy to time fairly, the exact default taken untimed

    def summary(self) -> str:
        """One short line (it is a column of `dvc metrics show`): each candidate's ms per step,
        fastest (the choice) first, then the probe's cost or `cached`, e.g.
        `bfloat16 46.2 ms < float32 68.4 ms; probe 1.38 s`."""
        if self.busy:
            return f"{self.choice}, the default: not timed, the machine was busy"
        fastest = sorted(self.seconds.items(), key=lambda kv: kv[1])
        steps = " < ".join(f"{name} {1e3 * s:.3g} ms" for name, s in fastest)
        how = "cached" if self.cached else f"probe {self.probe_seconds:.2f} s"
        return f"{steps}; {how}"


def enabled() -> bool:
    """False when $APPLIEDTORCH_AUTOTUNE turns timing off."""
    return os.environ.get(ENABLE_ENV, "").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    """$APPLIEDTORCH_CACHE_DIR, else $XDG_CACHE_HOME/appliedtorch, else ~/.cache/appliedtorch."""
    if override := os.environ.get(CACHE_ENV):
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "appliedtorch"


def cache_key(question: str, device: torch.device, shape_key: str) -> str:
    """A short stable key for (machine, torch version, question, shape)."""
    text = json.dumps(
        [machine_signature(device), torch.__version__, question, shape_key], sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The cache's entries; {} for a missing, oversized, unreadable or malformed file."""
    try:
        # O_NONBLOCK and the type check: a FIFO (or a device) named autotune.json would
        # otherwise block or stream for ever; only a regular file is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            raw = f.read(MAX_CACHE_BYTES + 1)
        if len(raw) > MAX_CACHE_BYTES:
            raise ValueError(f"larger than {MAX_CACHE_BYTES} bytes")
        data = json.loads(raw)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        log.warning("ignoring the autotune cache %s: %s", path, exc)
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}


def cached_choice(entry: dict[str, Any] | None, names: list[str]) -> Tuned | None:
    """The cached decision, if `entry` is well formed and names one of the candidates."""
    if entry is None or entry.get("choice") not in names:
        return None
    seconds = entry.get("seconds")
    if not isinstance(seconds, dict) or set(seconds) != set(names):
        return None
    if not all(isinstance(v, int | float) and 0 <= v < 1e6 for v in seconds.values()):
        return None
    load = entry.get("load")
    # A load average is a small float: a 400-digit integer would overflow float().
    load = float(load) if isinstance(load, int | float) and abs(load) < 1e6 else None
    return Tuned(entry["choice"], {n: float(seconds[n]) for n in names}, 0.0, True, load)


# How `time_candidates` times each candidate unless told otherwise.
TIMING = {"warmup": 2, "rounds": 3, "steps": 2}


def probe_steps(candidates: int, **timing: Any) -> int:
    """The steps `time_candidates` runs for `candidates` candidates with `timing` (warmup,
    rounds, steps; TIMING's where not given)."""
    t = {**TIMING, **timing}
    return candidates * (t["warmup"] + t["rounds"] * t["steps"])


def time_candidates(
    candidates: Mapping[str, Callable[[], object]],
    *,
    warmup: int = TIMING["warmup"],
    rounds: int = TIMING["rounds"],
    steps: int = TIMING["steps"],
    sync: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median seconds per step of each candidate: `warmup` untimed steps each, then `rounds`
    rounds of `steps` timed steps each, the candidates' order reversed every other round."""
    sync = sync or (lambda: None)
    for step in candidates.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            step = candidates[name]
            for _ in range(steps):
                sync()
                start = time.perf_counter()
                step()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def pick_fastest(
    question: str,
    candidates: Mapping[str, Callable[[], object]],
    *,
    device: torch.device,
    shape_key: str,
    use_cache: bool = True,
    busy_load: float | None = None,
    default: str | None = None,
    **timing: Any,
) -> Tuned:
    """The fastest of `candidates` on this machine: from the cache, else timed and cached.

    On a machine busier than `busy_load` (before or after timing) nothing is timed or cached:
    the cached choice, else `default` (the first candidate unless named), with one line saying
    so. `timing` passes warmup, rounds, steps and sync on to `time_candidates`. A single
    candidate is returned untimed.
    """
    names = list(candidates)
    if not names:
        raise ValueError(f"{question}: no candidates to choose from")
    if len(names) == 1:
        return Tuned(names[0], {}, 0.0, False)
    fallback = names[0] if default is None else default
    if fallback not in names:
        raise ValueError(f"{question}: default {fallback!r} is not a candidate ({names})")
    if use_cache and (hit := lookup(question, names, device=device, shape_key=shape_key)):
        return hit
    if is_busy(before := load_average(), busy_load):
        return untimed_default(question, fallback, before, busy_load)
    start = time.perf_counter()
    seconds = time_candidates(candidates, **timing)
    choice = min(names, key=seconds.__getitem__)
    load = load_average()
    tuned = Tuned(choice, seconds, time.perf_counter() - start, False, load)
    log.info(
        "%s: %s (seconds per step: %s; probe %.2f s, load average %s)",
        question,
        choice,
        ", ".join(f"{n} {s:.4g}" for n, s in seconds.items()),
        tuned.probe_seconds,
        "unknown" if load is None else f"{load:.2f}",
    )
    if is_busy(load, busy_load):  # the load rose while timing: the figures are skewed
        return untimed_default(question, fallback, load, busy_load)
    if use_cache:
        path = cache_dir() / CACHE_FILE
        remember(path, cache_key(question, device, shape_key), question, shape_key, tuned)
    return tuned


def is_busy(load: float | None, busy_load: float | None) -> bool:
    """True when a load average is known and above `busy_load` (None: never busy)."""
    return busy_load is not None and load is not None and load > busy_load


def untimed_default(
    question: str, default: str, load: float | None, busy_load: float | None
) -> Tuned:
    """The exact default, untimed and uncached, with the one line that says why."""
    log.warning(
        "%s: %s, the default, untimed: the machine is too busy to time the candidates fairly "
        "(load average %.2f above %g); a run on a quiet machine times them once and keeps the "
        "choice",
        question,
        default,
        load or 0.0,
        busy_load or 0.0,
    )
    return Tuned(default, {}, 0.0, False, load, busy=True)


def lookup(
    question: str, names: list[str], *, device: torch.device, shape_key: str
) -> Tuned | None:
    """The cached decision among `names` for this machine and shape, or None: nothing is timed."""
    path = cache_dir() / CACHE_FILE
    hit = cached_choice(read_cache(path).get(cache_key(question, device, shape_key)), names)
    if hit is not None:
        log.info("%s: %s (cached in %s)", question, hit.choice, path)
    return hit


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def remember(path: Path, key: str, question: str, shape_key: str, tuned: Tuned) -> None:
    """Add the decision to the cache; a cache that cannot be written only costs a later probe."""
    entries = read_cache(path)
    entries.pop(key, None)
    entries[key] = {
        "question": question,
        "shape": shape_key[:200],
        "choice": tuned.choice,
        "seconds": tuned.seconds,
        "load": tuned.load,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    while len(entries) > MAX_ENTRIES:
        entries.pop(min(entries, key=lambda k: str(entries[k].get("measured", ""))))
    try:
        write_json(path, {"version": 1, "entries": entries})
    except Exception as exc:  # noqa: BLE001 - AppliedTorchError or OSError: never fatal here
        log.warning("could not write the autotune cache %s: %s", path, exc)
