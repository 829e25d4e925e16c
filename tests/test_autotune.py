"""`auto` means measured: machine/autotune.py (timing, cache) and classify/training/tuning.py (the probe)."""

from __future__ import annotations

import json
import os
import time
import types

import pytest
import torch

from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.training import tuning
from appliedtorch.classify.training.steps import training_step
from appliedtorch.core import openmp
from appliedtorch.machine import autotune

CPU = torch.device("cpu")
FAST = {"warmup": 1, "rounds": 2, "steps": 2}  # 4 timed steps per candidate


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache directory, with timing on, on a quiet machine (the
    real load average of a shared test machine must not decide; `loads` fakes a busy one)."""
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(autotune.ENABLE_ENV, raising=False)
    monkeypatch.setattr(autotune, "load_average", lambda: 0.0)
    return tmp_path / "cache" / autotune.CACHE_FILE


class Clock:
    """autotune's perf_counter in these tests: only the Counted candidates advance it, so on a
    busy machine a no-op step that the scheduler holds up for milliseconds still takes 0 s."""

    now = 0.0

    def perf_counter(self) -> float:
        return self.now


CLOCK = Clock()


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    global CLOCK
    CLOCK = Clock()
    fake = types.SimpleNamespace(
        perf_counter=CLOCK.perf_counter, strftime=time.strftime, gmtime=time.gmtime
    )
    monkeypatch.setattr(autotune, "time", fake)
    return CLOCK


class Counted:
    """A candidate step that counts its calls and takes `seconds` of the test's clock."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.calls = seconds, 0

    def __call__(self) -> None:
        self.calls += 1
        CLOCK.now += self.seconds


def pick(candidates, shape_key="shape A", **kwargs):
    return autotune.pick_fastest("q", candidates, device=CPU, shape_key=shape_key, **FAST, **kwargs)


def test_picks_the_faster_and_caches_it(cache):
    slow, fast = Counted(0.02), Counted()
    tuned = pick({"slow": slow, "fast": fast})
    assert tuned.choice == "fast" and not tuned.cached
    assert tuned.seconds["slow"] >= 0.02 > tuned.seconds["fast"]
    assert slow.calls == fast.calls == 1 + 2 * 2  # warm-up, then rounds x steps
    assert tuned.probe_seconds >= 4 * 0.02
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert entry["choice"] == "fast"


def test_faster_candidate_listed_first_also_wins():
    tuned = pick({"fast": Counted(), "slow": Counted(0.02)})
    assert tuned.choice == "fast"


def test_second_call_skips_the_probe():
    first = pick({"slow": Counted(0.02), "fast": Counted()})
    slow, fast = Counted(), Counted(0.02)  # the machine "changed": the cache still answers
    again = pick({"slow": slow, "fast": fast})
    assert slow.calls == fast.calls == 0
    assert again.cached and again.choice == "fast" and again.probe_seconds == 0
    assert again.seconds == pytest.approx(first.seconds)


def loads(monkeypatch, *readings: float) -> None:
    """Fake 1-minute load averages: autotune reads them in this order (the last one repeats)."""
    values = list(readings)
    monkeypatch.setattr(
        autotune, "load_average", lambda: values.pop(0) if len(values) > 1 else values[0]
    )


def test_a_busy_machine_times_nothing_and_takes_the_exact_default(cache, monkeypatch, caplog):
    loads(monkeypatch, 9.0)
    slow, fast = Counted(0.02), Counted()
    with caplog.at_level("WARNING", logger=autotune.__name__):
        tuned = pick({"float32": slow, "bfloat16": fast}, busy_load=2.0)
    assert (tuned.choice, tuned.busy, tuned.load) == ("float32", True, 9.0)
    assert slow.calls == fast.calls == 0 and not cache.exists()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "float32, the default, untimed: the machine is too busy" in line
    assert "load average 9.00 above 2" in line and "not timed" in tuned.summary()


def test_load_that_rises_while_timing_discards_the_timing(cache, monkeypatch):
    loads(monkeypatch, 1.0, 9.0)  # quiet before, busy after
    tuned = pick({"float32": Counted(0.02), "bfloat16": Counted()}, busy_load=2.0)
    assert tuned.choice == "float32" and tuned.busy and not cache.exists()


def test_a_busy_run_keeps_the_choice_a_quiet_run_made(cache, monkeypatch):
    loads(monkeypatch, 1.0)
    quiet = pick({"float32": Counted(0.02), "bfloat16": Counted()}, busy_load=2.0)
    assert quiet.choice == "bfloat16" and not quiet.busy and cache.exists()
    loads(monkeypatch, 9.0)
    slow, fast = Counted(), Counted(0.02)  # a busy machine would time it the other way round
    busy = pick({"float32": slow, "bfloat16": fast}, busy_load=2.0)
    assert busy.choice == "bfloat16" and busy.cached and slow.calls == fast.calls == 0


def test_the_default_can_be_named_and_must_be_a_candidate(monkeypatch):
    loads(monkeypatch, 9.0)
    assert pick({"a": Counted(), "b": Counted()}, busy_load=2.0, default="b").choice == "b"
    with pytest.raises(ValueError, match="default 'c' is not a candidate"):
        pick({"a": Counted(), "b": Counted()}, default="c")


def test_another_shape_key_probes_again():
    pick({"slow": Counted(0.02), "fast": Counted()})
    a, b = Counted(0.02), Counted()
    tuned = pick({"slow": a, "fast": b}, shape_key="shape B")
    assert a.calls > 0 and b.calls > 0 and not tuned.cached


def test_another_machine_probes_again(monkeypatch):
    pick({"slow": Counted(0.02), "fast": Counted()})
    other = {"cpu": "another CPU", "cores": 64}
    monkeypatch.setattr(autotune, "machine_signature", lambda device: other)
    a, b = Counted(), Counted(0.02)
    tuned = pick({"slow": a, "fast": b})
    assert a.calls > 0 and not tuned.cached and tuned.choice == "slow"


def test_other_candidates_probe_again():
    pick({"slow": Counted(0.02), "fast": Counted()})
    third = Counted()
    tuned = pick({"slow": Counted(0.02), "third": third})
    assert third.calls > 0 and tuned.choice == "third"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'{"entries": {"k": 1}}',
        b"[" * 100_000 + b"]" * 100_000,  # too deep for the parser, and too large
        b" " * (autotune.MAX_CACHE_BYTES + 1),
        b"\xff\xfe garbage",
    ],
)
def test_corrupt_cache_is_ignored_and_replaced(cache, content):
    cache.parent.mkdir(parents=True)
    cache.write_bytes(content)
    fast = Counted()
    tuned = pick({"slow": Counted(0.01), "fast": fast})
    assert fast.calls > 0 and tuned.choice == "fast" and not tuned.cached
    assert autotune.read_cache(cache)  # rewritten, readable


def test_cached_choice_that_is_no_candidate_is_ignored(cache):
    pick({"slow": Counted(0.01), "fast": Counted()})
    data = json.loads(cache.read_text())
    for entry in data["entries"].values():
        entry["choice"] = "rm -rf /"
    cache.write_text(json.dumps(data))
    fast = Counted()
    assert pick({"slow": Counted(0.01), "fast": fast}).choice == "fast" and fast.calls > 0


def test_cached_load_too_large_for_a_float_is_ignored(cache):
    """A load average of 400 digits (valid JSON) is no reason for an OverflowError."""
    pick({"slow": Counted(0.01), "fast": Counted()})
    data = json.loads(cache.read_text())
    for entry in data["entries"].values():
        entry["load"] = 10**400
    cache.write_text(json.dumps(data))
    tuned = pick({"slow": Counted(0.01), "fast": Counted()})
    assert tuned.cached and tuned.choice == "fast" and tuned.load is None


def test_a_fifo_in_place_of_the_cache_is_not_waited_on(cache):
    """Opening a FIFO for reading blocks until a writer comes: the cache is read only when it
    is a regular file, else ignored (timed again), and the write replaces the FIFO."""
    cache.parent.mkdir(parents=True)
    os.mkfifo(cache)
    start = time.monotonic()
    assert autotune.read_cache(cache) == {}
    tuned = pick({"slow": Counted(0.01), "fast": Counted()})
    assert tuned.choice == "fast" and time.monotonic() - start < 10
    assert autotune.read_cache(cache)  # replaced by a regular file


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(autotune.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune.cache_dir() == tmp_path / "xdg" / "appliedtorch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert autotune.cache_dir().parts[-2:] == (".cache", "appliedtorch")


def test_unwritable_cache_only_warns(monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(autotune.CACHE_ENV, str(blocker / "sub"))  # a directory under a file
    assert pick({"slow": Counted(0.01), "fast": Counted()}).choice == "fast"
    assert "could not write the autotune cache" in caplog.text


# --------------------------------------------------------------------------------------------
# The classifier's probe


def mlp_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("mlp", in_features=16, hidden_size=8, num_classes=3, dropout=0.3)
    batch = (torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))

    def make_optimizer(m):
        return torch.optim.Adam(m.parameters(), lr=1e-2)

    return model, make_optimizer, batch


def test_explicit_settings_are_not_probed(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("probed an explicit setting")

    monkeypatch.setattr(tuning, "pick_fastest", no_probe)
    model, make_optimizer, batch = mlp_setup()
    for bf16, threads in [(True, 1), (False, None), (False, 2)]:
        result = tuning.tune(model, make_optimizer, batch, CPU, bf16=bf16, threads=threads)
        assert (result.bf16, result.threads, result.probe) == (bf16, threads, None)


@pytest.mark.parametrize("off", ["0", "off", "False"])
def test_timing_turned_off_decides_auto_by_the_flags(monkeypatch, off):
    monkeypatch.setenv(autotune.ENABLE_ENV, off)
    monkeypatch.setattr(tuning, "pick_fastest", lambda *a, **k: pytest.fail("probed"))
    model, make_optimizer, batch = mlp_setup()
    for native in (False, True):
        monkeypatch.setattr(tuning, "native_bf16", lambda device, n=native: n)
        monkeypatch.setattr(tuning, "resolve_bf16", lambda s, device, n=native: n)
        result = tuning.tune(model, make_optimizer, batch, CPU, bf16="auto", threads="auto")
        assert (result.bf16, result.threads, result.probe) == (native, None, None)


def test_auto_without_native_bf16_is_fp32_unprobed(monkeypatch):
    monkeypatch.setattr(tuning, "native_bf16", lambda device: False)
    monkeypatch.setattr(tuning, "pick_fastest", lambda *a, **k: pytest.fail("probed"))
    model, make_optimizer, batch = mlp_setup()
    result = tuning.tune(model, make_optimizer, batch, CPU, bf16="auto", threads=1)
    assert result.bf16 is False and result.tags()["compute_dtype"] == "float32"
    assert result.record() == {} and "autotune" not in result.tags()


def test_auto_takes_the_measured_choice(monkeypatch):
    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # 1 and 2 threads are candidates
    seen = {}

    def fake(question, candidates, **kwargs):
        seen.update(candidates)
        return autotune.Tuned("bfloat16 1 threads", dict.fromkeys(candidates, 0.1), 0.5, False)

    monkeypatch.setattr(tuning, "pick_fastest", fake)
    model, make_optimizer, batch = mlp_setup()
    result = tuning.tune(model, make_optimizer, batch, CPU, bf16="auto", threads="auto")
    assert sorted(seen) == [
        "bfloat16 1 threads",
        "bfloat16 2 threads",
        "float32 1 threads",
        "float32 2 threads",
    ]
    assert (result.bf16, result.threads) == (True, 1)
    line = " < ".join(f"{name} 100 ms" for name in seen) + "; probe 0.50 s"
    assert result.record() == {"autotune": line}
    assert result.tags() == {
        "compute_dtype": "bfloat16",
        "threads": "1",
        "openmp_wait": openmp.decision().tag(),
        "autotune.choice": "bfloat16 1 threads",
        "autotune": line,
    }


def test_a_run_too_short_for_the_probe_is_not_probed(monkeypatch, caplog):
    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)
    monkeypatch.setattr(tuning, "pick_fastest", lambda *a, **k: pytest.fail("probed"))
    model, make_optimizer, batch = mlp_setup()
    # 4 candidates x (2 warm-up + 3 x 2 timed) steps = 32: more than a tenth of 300 steps
    with caplog.at_level("INFO", logger=tuning.__name__):
        result = tuning.tune(
            model, make_optimizer, batch, CPU, bf16="auto", threads="auto", run_steps=300
        )
    assert (result.bf16, result.threads, result.probe) == (False, None, None)
    assert "300 training steps are too few for a probe of 32" in caplog.text
    # an explicit part of the setting is kept as it is
    result = tuning.tune(model, make_optimizer, batch, CPU, bf16="auto", threads=1, run_steps=9)
    assert (result.bf16, result.threads) == (False, 1)


def test_a_run_long_enough_is_probed(monkeypatch):
    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)
    model, make_optimizer, batch = mlp_setup()
    # 2 candidates x (1 + 2 x 2) steps = 10, a tenth of 100
    result = tuning.tune(
        model, make_optimizer, batch, CPU, bf16="auto", threads=1, run_steps=100, **FAST
    )
    assert result.probe is not None and not result.probe.cached
    assert set(result.probe.seconds) == {"float32", "bfloat16"}


def test_a_short_run_takes_the_cached_choice_untimed(monkeypatch):
    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)
    model, make_optimizer, batch = mlp_setup()
    monkeypatch.setattr(autotune, "load_average", lambda: 0.0)  # quiet: the choice is cached
    timed = tuning.tune(model, make_optimizer, batch, CPU, bf16="auto", threads=1, **FAST)
    assert timed.probe is not None and not timed.probe.cached
    monkeypatch.setattr(autotune, "time_candidates", lambda *a, **k: pytest.fail("timed"))
    short = tuning.tune(model, make_optimizer, batch, CPU, bf16="auto", threads=1, run_steps=2)
    assert short.probe is not None and short.probe.cached
    assert (short.bf16, short.threads) == (timed.bf16, timed.threads)


def state_of(model, optimizer):
    """Copies of everything a probe could change."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        json.loads(json.dumps(optimizer.state_dict()["param_groups"])),
        {
            k: {n: t.clone() for n, t in s.items()}
            for k, s in optimizer.state_dict()["state"].items()
        },
        torch.get_rng_state(),
        model.training,
    )


def test_probe_leaves_model_optimizer_and_rng_exactly_as_they_were(monkeypatch):
    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)  # two dtypes are timed
    model, make_optimizer, batch = mlp_setup()
    optimizer = make_optimizer(model)
    training_step(model, optimizer)(*batch)  # Adam has state now
    model.eval()
    before = state_of(model, optimizer)
    result = tuning.tune(model, make_optimizer, batch, CPU, bf16="auto", threads="auto", **FAST)
    after = state_of(model, optimizer)
    assert result.probe is not None and not result.probe.cached
    assert len(result.probe.seconds) == 2 * len({1, torch.get_num_threads()})  # all were timed
    for key, tensor in before[0].items():
        assert torch.equal(after[0][key], tensor), key
    assert after[1] == before[1]
    for key, moments in before[2].items():
        for name, tensor in moments.items():
            assert torch.equal(after[2][key][name], tensor), (key, name)
    assert torch.equal(after[3], before[3])  # the global generator (dropout) is untouched
    assert after[4] == before[4]


def test_training_after_a_probe_is_unchanged(monkeypatch):
    """Same steps after a probe as without one: weights equal bit for bit."""
    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)

    def train(probe: bool) -> dict[str, torch.Tensor]:
        model, make_optimizer, batch = mlp_setup(seed=1)
        optimizer = make_optimizer(model)
        if probe:
            tuning.tune(model, make_optimizer, batch, CPU, bf16="auto", threads=1, **FAST)
        step = training_step(model, optimizer)
        for _ in range(3):
            step(*batch)  # dropout draws from the global generator
        return model.state_dict()

    plain, probed = train(False), train(True)
    for key, tensor in plain.items():
        assert torch.equal(probed[key], tensor), key


def test_first_batch_draws_no_random_numbers():
    from appliedtorch.classify.training.batches import Batches, Normalizer

    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(10)
    generator = torch.Generator().manual_seed(3)
    batches = Batches(images, labels, 4, Normalizer((0.5,), (0.5,)), shuffle=generator)
    state = generator.get_state()
    x, y = tuning.first_batch(batches)
    assert torch.equal(generator.get_state(), state)
    assert x.shape == (4, 1, 4, 4) and torch.equal(y, labels[:4])


# --------------------------------------------------------------------------------------------
# In the training loop


def test_a_probed_run_gives_the_numbers_of_its_explicit_choice(monkeypatch):
    from appliedtorch.classify.artifacts.outputs import (
        run_description,
        summary_metrics,
        tuning_tags,
    )
    from appliedtorch.classify.params import MLPParams
    from appliedtorch.classify.training.loop import train_classifier
    from appliedtorch.data.loading import synthetic_in_memory

    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)  # fp32 and bf16 are timed
    data = synthetic_in_memory("mnist", 256, 64)
    common = {"epochs": 2, "batch_size": 32, "lr": 1e-3, "dropout": 0.2}
    # 16 steps: too short for a probe of 4 x 8 steps, so fp32 on torch's threads, untimed
    short = train_classifier(data, MLPParams(bf16="auto", threads="auto", **common), seed=3)
    assert (short.bf16, short.threads, short.tuning.probe) == (False, None, None)
    monkeypatch.setattr(tuning, "PROBE_SHARE", float("inf"))  # any run pays for the probe
    probed = train_classifier(data, MLPParams(bf16="auto", threads="auto", **common), seed=3)
    assert probed.tuning is not None and probed.tuning.probe is not None
    explicit = MLPParams(bf16=probed.bf16, threads=probed.threads, **common)
    plain = train_classifier(data, explicit, seed=3)
    assert plain.tuning is not None and plain.tuning.probe is None
    for key, tensor in plain.model.state_dict().items():
        assert torch.equal(probed.model.state_dict()[key], tensor), key
    assert [h.train_loss for h in probed.history] == [h.train_loss for h in plain.history]
    line = run_description(probed, "synthetic")["autotune"]
    assert line.startswith(probed.tuning.probe.choice + " ")  # the fastest first
    assert all(name in line for name in probed.tuning.probe.seconds)
    assert "autotune" not in run_description(plain, "synthetic")
    assert "autotune" not in summary_metrics(probed)  # a description, not a metric
    tags = tuning_tags(probed)
    assert tags["autotune.choice"] == probed.tuning.probe.choice
    assert tags["compute_dtype"] == ("bfloat16" if probed.bf16 else "float32")
