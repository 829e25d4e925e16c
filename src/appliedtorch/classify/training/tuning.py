"""`bf16: auto` and `threads: auto` for a classifier: timed on its own model, batch and device.

    >>> tuning = tune(model, lambda m: make_optimizer(m, config, device), first_batch(train),
    ...               device, bf16="auto", threads="auto")
    >>> tuning.bf16, tuning.threads, tuning.record(), tuning.tags()  # the choice; what to log

The candidates are real training steps (`steps.training_step`, the loop's, under the candidate's
dtype) timed by
`appliedtorch.machine.autotune.pick_fastest`, which caches the decision per machine. The probe
trains a copy of the model with its own optimizer inside `torch.random.fork_rng`: the model, its
optimizer and every random stream are as they were before, so a run gives the same numbers as
the same run with the chosen values set explicitly. An explicit `true`/`false` or thread count is
never probed. bf16 is a candidate only where it is native (`hardware.native_bf16`): emulated, it
is many times slower, and timing that would only cost time.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from appliedtorch.classify.runs.distributed import SINGLE, World
from appliedtorch.classify.training.batches import Batches
from appliedtorch.classify.training.steps import training_step
from appliedtorch.core import openmp
from appliedtorch.core.utils import thread_count
from appliedtorch.machine.autotune import Tuned, enabled, lookup, pick_fastest, probe_steps
from appliedtorch.machine.hardware import native_bf16, resolve_bf16

log = logging.getLogger(__name__)

DTYPE_NAMES = {False: "float32", True: "bfloat16"}
QUESTION = "classifier training step"
# The most of a run's training steps the probe may take. A shorter run (a smoke test, a
# `train_limit` trial) takes a cached decision, or fp32 on torch's threads, untimed: timing
# would cost it more than the faster choice could save.
PROBE_SHARE = 0.1


@dataclass(frozen=True)
class Tuning:
    """The resolved `bf16` and `threads`, and the probe behind them (None: nothing was auto)."""

    bf16: bool
    threads: int | None
    probe: Tuned | None = None

    @property
    def compute_dtype(self) -> str:
        """'bfloat16' or 'float32' (the run's `compute_dtype` tag)."""
        return DTYPE_NAMES[self.bf16]

    def as_record(self) -> dict[str, Any]:
        """The choice and its probe as plain values (kept in a resume state)."""
        probe = None if self.probe is None else dataclasses.asdict(self.probe)
        return {"bf16": self.bf16, "threads": self.threads, "probe": probe}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Tuning | None:
        """`as_record`'s values back as a Tuning; None when they are not such a record."""
        try:
            probe = record.get("probe")
            tuned = Tuned(**probe) if isinstance(probe, dict) else None
            threads = record["threads"]
            if not isinstance(record["bf16"], bool) or not (
                threads is None or type(threads) is int
            ):
                return None
            return cls(record["bf16"], threads, tuned)
        except (KeyError, TypeError):
            return None

    def record(self) -> dict[str, str]:
        """For metrics.json: after a probe, `autotune`, one line with the choice and each
        candidate's ms per step (nothing else: metrics.json keeps to the headline numbers)."""
        return {} if self.probe is None else {"autotune": self.probe.summary()}

    def tags(self) -> dict[str, str]:
        """For the run's tags: compute_dtype, threads, how idle OpenMP threads wait and, after
        a probe, its choice and line."""
        out = {
            "compute_dtype": self.compute_dtype,
            "threads": str(self.threads or "default"),
            "openmp_wait": openmp.decision().tag(),
        }
        if self.probe is not None:
            out |= {"autotune.choice": self.probe.choice, "autotune": self.probe.summary()}
        return out


def first_batch(batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch_size` samples, normalised, in order: no random stream is drawn."""
    n = batches.batch_size
    return batches.normalize(batches.images[:n]), batches.labels[:n]


def _probe_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    bf16: bool,
    label_smoothing: float,
) -> Callable[[], None]:
    """One training step on `batch`, the one the loop would take (`steps.training_step`)."""
    step = training_step(net, optimizer, bf16=bf16, label_smoothing=label_smoothing)

    def run() -> None:
        net.train()
        step(*batch)

    return run


def bf16_options(setting: bool | str, device: torch.device) -> list[bool]:
    """`auto`: fp32, and bf16 where native; an explicit value alone (warned if emulated).
    With timing off ($APPLIEDTORCH_AUTOTUNE=0), `auto` is bf16 exactly where it is native."""
    if setting != "auto" or not enabled():
        return [resolve_bf16(setting, device)]
    return [False, True] if native_bf16(device) else [False]


def thread_options(setting: int | str | None, device: torch.device) -> list[int | None]:
    """`auto` on the CPU: 1 and every core torch uses; an explicit value (or None) alone.
    With timing off ($APPLIEDTORCH_AUTOTUNE=0), `auto` is torch's default (None)."""
    if setting != "auto":
        return [setting]  # type: ignore[list-item]
    if device.type != "cpu" or not enabled():  # CPU threads barely matter to a GPU's step
        return [None]
    return sorted({1, torch.get_num_threads()})


def candidate_name(bf16: bool, threads: int | None, both: bool) -> str:
    """'bfloat16', or 'bfloat16 2 threads' when threads are a choice too."""
    dtype = DTYPE_NAMES[bf16]
    return f"{dtype} {threads} threads" if both else dtype


def shape_key(model: nn.Module, images: torch.Tensor, optimizer: torch.optim.Optimizer) -> str:
    """What about the work decides its speed: the net, its parameter shapes, the batch (shape,
    dtype, memory format) and the optimizer."""
    shapes = [tuple(p.shape) for p in model.parameters()]
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]
    channels_last = images.dim() == 4 and not images.is_contiguous()
    channels_last &= images.is_contiguous(memory_format=torch.channels_last)
    layout = "channels_last" if channels_last else "contiguous"
    return (
        f"{type(model).__name__} params {digest} batch {tuple(images.shape)} {images.dtype} "
        f"{layout} {type(optimizer).__name__}"
    )


def tune(
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    *,
    bf16: bool | str,
    threads: int | str | None,
    label_smoothing: float = 0.0,
    world: World = SINGLE,
    use_cache: bool = True,
    run_steps: int | None = None,
    time_under_load: bool = False,
    **timing: Any,
) -> Tuning:
    """Resolve `bf16` and `threads` (`auto` or explicit) for training `model` on `device`.

    Under torchrun every process probes and all take rank 0's choice (the same numerics on
    every rank). A choice timed on a CPU busier than its core count (load average) is not
    cached. A run of `run_steps` training steps too short for the probe (PROBE_SHARE) is not
    probed. On a machine busier than its core count nothing is timed (the cached choice or the
    exact default) unless `time_under_load` (a benchmark, which reports the load it met).
    `timing` is passed to `autotune.time_candidates` (warmup, rounds, steps).
    """
    dtypes, counts = bf16_options(bf16, device), thread_options(threads, device)
    if len(dtypes) * len(counts) == 1:
        return Tuning(dtypes[0], counts[0])
    both = len(dtypes) > 1 and len(counts) > 1
    if len(dtypes) == 1 and len(counts) > 1:
        options = {f"{c} threads": (dtypes[0], c) for c in counts}
    else:
        options = {candidate_name(b, c, both): (b, c) for b in dtypes for c in counts}
    # The cache's key: the net, the batch, the optimizer's kind and the candidates.
    key = f"{shape_key(model, batch[0], make_optimizer(model))} candidates {sorted(options)}"
    probe = probe_steps(len(options), **timing)
    if run_steps is not None and probe > PROBE_SHARE * run_steps:
        hit = lookup(QUESTION, list(options), device=device, shape_key=key) if use_cache else None
        return _too_short(options, dtypes, counts, hit, world, run_steps, probe)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe_model = copy.deepcopy(model)
        probe_optimizer = make_optimizer(probe_model)
        candidates = {}
        for name, (b, c) in options.items():
            step = _probe_step(probe_model, probe_optimizer, batch, b, label_smoothing)
            candidates[name] = _with_threads(step, c)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        tuned = pick_fastest(
            QUESTION,
            candidates,
            device=device,
            shape_key=key,
            use_cache=use_cache,
            busy_load=None if time_under_load else float(os.cpu_count() or 1),
            sync=sync,
            **timing,
        )
    choice = world.broadcast_object(tuned.choice)
    if choice != tuned.choice:  # rank 0 decided otherwise: its measurement is the one logged
        tuned = Tuned(choice, tuned.seconds, tuned.probe_seconds, tuned.cached, tuned.load)
    return Tuning(*options[choice], probe=tuned)


def _too_short(
    options: dict[str, tuple[bool, int | None]],
    dtypes: list[bool],
    counts: list[int | None],
    hit: Tuned | None,
    world: World,
    run_steps: int,
    probe: int,
) -> Tuning:
    """A run too short to pay for a probe: the cached choice, or the untimed default."""
    untimed = (dtypes[0] if len(dtypes) == 1 else False, counts[0] if len(counts) == 1 else None)
    if hit is None:
        log.info(
            "bf16/threads auto: %s on %s threads, untimed: this run's %d training steps are "
            "too few for a probe of %d",
            DTYPE_NAMES[untimed[0]],
            untimed[1] or "torch's default",
            run_steps,
            probe,
        )
    choice = world.broadcast_object(options[hit.choice] if hit else untimed)
    return Tuning(*choice, probe=hit if hit and options[hit.choice] == choice else None)


def _with_threads(step: Callable[[], None], threads: int | None) -> Callable[[], None]:
    def run() -> None:
        with thread_count(threads):
            step()

    return run
