"""bf16 detection and the CPU peak estimate (machine/hardware.py), and `bf16: auto` in the params."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from appliedtorch.classify.params import MLPParams
from appliedtorch.core.errors import ParamsError
from appliedtorch.machine import hardware

CPU = torch.device("cpu")


def _linux_flags() -> set[str]:
    """The flags line of /proc/cpuinfo, read independently of the module under test."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo")
def test_detection_answers_on_this_machine():
    has_flag = bool({"avx512_bf16", "amx_bf16"} & _linux_flags())
    assert hardware.cpu_native_bf16() == (has_flag and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert hardware.resolve_bf16("auto", CPU) == hardware.cpu_native_bf16()
    desc = hardware.cpu_description()
    assert desc["cores"] >= 1 and desc["bf16_flags"] == sorted(
        {"avx512_bf16", "amx_bf16"} & _linux_flags(), key=hardware.NATIVE_BF16_FLAGS.index
    )


def _fake_cpu(monkeypatch, flags: str, vendor: str = "GenuineIntel", family: str = "6"):
    info = {"flags": flags, "vendor_id": vendor, "cpu family": family, "cpu MHz": "2000.000"}
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: info)
    monkeypatch.setattr(hardware, "_warned", set())


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    _fake_cpu(monkeypatch, "fpu sse2 avx avx2 fma")
    assert hardware.cpu_native_bf16() is False
    assert hardware.resolve_bf16("auto", CPU) is False
    assert hardware.resolve_bf16(False, CPU) is False


def test_true_without_native_bf16_warns_once(monkeypatch, caplog):
    _fake_cpu(monkeypatch, "fpu sse2 avx avx2 fma")
    with caplog.at_level(logging.WARNING, logger="appliedtorch.machine.hardware"):
        assert hardware.resolve_bf16(True, CPU) is True  # honoured, but said
        assert hardware.resolve_bf16(True, CPU) is True
    warnings = [r for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warnings) == 1, caplog.text


def test_true_with_native_bf16_is_silent(monkeypatch, caplog):
    _fake_cpu(monkeypatch, "avx2 fma avx512f avx512_bf16")
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="appliedtorch.machine.hardware"):
        assert hardware.resolve_bf16(True, CPU) is True
        assert hardware.resolve_bf16("auto", CPU) is True
    assert not caplog.records


@pytest.mark.parametrize(
    ("flags", "vendor", "family", "fmt", "per_cycle"),
    [
        ("avx2 fma", "GenuineIntel", "6", "fp32", 32),  # 2 FMA pipes x 8 lanes x 2
        ("avx2 fma avx512f", "GenuineIntel", "6", "fp32", 64),
        ("avx2 fma avx512f", "AuthenticAMD", "25", "fp32", 32),  # Zen 4: 256-bit pipes
        ("avx2 fma avx512f avx512_bf16", "AuthenticAMD", "25", "bf16", 64),
        ("avx2 fma avx512f avx512_bf16 amx_tile amx_bf16", "GenuineIntel", "6", "bf16", 1024),
        ("avx2 fma", "GenuineIntel", "6", "bf16", 32),  # emulated: the fp32 rate at best
    ],
)
def test_peak_estimate(monkeypatch, flags, vendor, family, fmt, per_cycle):
    _fake_cpu(monkeypatch, flags, vendor, family)
    peak, how = hardware.cpu_peak_gflops(fmt, threads=2)
    assert peak == pytest.approx(2 * 2.0 * per_cycle)
    assert f"{per_cycle} FLOP/cycle" in how


def test_peak_unknown_without_clock(monkeypatch):
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: {})
    assert hardware.cpu_peak_gflops("fp32")[0] is None


@pytest.mark.parametrize("value", ["auto", True, False])
def test_bf16_param_values(value):
    assert MLPParams(bf16=value).bf16 == value


def test_bf16_param_rejects_other_words(params_file):
    import yaml

    from appliedtorch.params import load_params

    path = params_file({"cnn": {"bf16": "maybe"}})
    with pytest.raises(ParamsError, match=r"cnn\.bf16"):
        load_params(path)
    assert yaml.safe_load(path.read_text())["cnn"]["bf16"] == "maybe"


@pytest.mark.parametrize("value", ["auto", 1, 4, None])
def test_threads_param_values(value):
    assert MLPParams(threads=value).threads == value


@pytest.mark.parametrize("value", [0, "lots", 1.5, True, 10**6])
def test_threads_param_rejects_others_in_one_line(params_file, value):
    from appliedtorch.params import load_params

    path = params_file({"mlp": {"threads": value}})
    with pytest.raises(ParamsError, match=r"mlp\.threads must be a thread count") as raised:
        load_params(path)
    assert "\n" not in str(raised.value)


def test_training_resolves_auto_by_the_flags_with_timing_off(monkeypatch):
    from appliedtorch.classify.training.loop import train_classifier
    from appliedtorch.data.loading import synthetic_in_memory

    monkeypatch.setenv("APPLIEDTORCH_AUTOTUNE", "0")  # timed `auto`: tests/test_autotune.py
    data = synthetic_in_memory("mnist", 64, 32)
    section = MLPParams(bf16="auto", epochs=1, batch_size=32)
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: False)
    assert train_classifier(data, section).bf16 is False
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: True)
    assert train_classifier(data, section).bf16 is True


# --------------------------------------------------------------------------------------------
# Flushing denormals


def _flushed_fraction() -> float:
    """Share of a large float64 op (split over every intra-op thread) whose denormal results
    (1e-300 x 1e-20 = 1e-320) came out as zero."""
    x = torch.full((1 << 20,), 1e-300, dtype=torch.float64)
    return float(((x * 1e-20) == 0).double().mean())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_flush_denormals_inside_on_every_thread_and_restored_after(two_threads):
    import sklearn.metrics  # noqa: F401 - loads its own OpenMP runtime: torch's must be the one set

    assert not hardware.denormals_flushed() and _flushed_fraction() == 0.0
    with hardware.flush_denormals("cpu"):
        assert hardware.denormals_flushed()
        assert _flushed_fraction() == 1.0  # the OpenMP worker's share too, not only this thread's
    assert not hardware.denormals_flushed() and _flushed_fraction() == 0.0


def test_flush_denormals_keeps_a_mode_already_on(two_threads):
    hardware.set_flush_denormal_everywhere(True)
    try:
        with hardware.flush_denormals("cpu"):
            pass
        assert hardware.denormals_flushed() and _flushed_fraction() == 1.0
    finally:
        hardware.set_flush_denormal_everywhere(False)
    assert _flushed_fraction() == 0.0


def test_flush_denormals_off_or_on_a_gpu_changes_nothing():
    with hardware.flush_denormals("cpu", enabled=False):
        assert not hardware.denormals_flushed()
    with hardware.flush_denormals("cuda"):
        assert not hardware.denormals_flushed()


def _denormals(tensors) -> int:
    tiny = torch.finfo(torch.float32).tiny
    return sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in tensors)


def _train_mlp(flush: bool) -> tuple[float, int, torch.Tensor]:
    """A short MLP training on synthetic MNIST: (test accuracy, denormals left in the weights
    and Adam's moments, last layer's weights). Adam's betas of 0.5 make the moments of gradients
    that turn zero (a unit that stops firing) decay into denormals within these 96 steps, as
    the default 0.9/0.999 do over a full MNIST epoch."""
    from appliedtorch.classify.nets.models import build_model
    from appliedtorch.classify.training.batches import Batches, Normalizer
    from appliedtorch.classify.training.steps import training_step
    from appliedtorch.data.loading import synthetic_in_memory

    data = synthetic_in_memory("mnist", 2000, 500)
    torch.manual_seed(0)
    model = build_model("mlp", in_features=784, hidden_size=64, num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.5))
    normalize = Normalizer((0.5,), (0.5,))
    shuffle = torch.Generator().manual_seed(0)
    train = Batches(data.train_images, data.train_labels, 64, normalize, shuffle=shuffle)
    step = training_step(model, optimizer)
    with hardware.flush_denormals("cpu", enabled=flush):
        for _ in range(3):
            for batch in train:
                step(*batch)
        with torch.inference_mode():
            logits = model.eval()(normalize(data.test_images))
    accuracy = float((logits.argmax(1) == data.test_labels).double().mean())
    moments = [t for state in optimizer.state.values() for t in state.values() if t.dim()]
    denormals = _denormals([*moments, *model.parameters()])
    return accuracy, denormals, model.fc3.weight.detach().clone()


def test_flushing_denormals_leaves_accuracy_unchanged():
    # Not asserted bit-exact in general: a value below ~1.2e-38 (float32) is read as zero with
    # flushing, and a difference can grow over steps. Here the denormals are Adam moments of
    # zero gradients, whose updates are far below a weight's last bit: the weights match.
    plain_acc, plain_denormals, plain_w = _train_mlp(flush=False)
    flushed_acc, flushed_denormals, flushed_w = _train_mlp(flush=True)
    assert plain_denormals > 0 and flushed_denormals == 0  # flushing had something to do
    assert plain_acc > 0.5  # it learned something: the comparison means something
    assert flushed_acc == pytest.approx(plain_acc, abs=0.01)
    torch.testing.assert_close(flushed_w, plain_w, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Freed memory kept for the next step

_STEPS = """
import resource, sys
import torch
import torch.nn.functional as F
from appliedtorch.classify.nets.models import CNN
from appliedtorch.machine.hardware import keep_freed_memory

if sys.argv[1] == "kept":
    assert keep_freed_memory("cpu")
model = CNN().to(memory_format=torch.channels_last)
x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
optimizer = torch.optim.Adam(model.parameters(), fused=True)
counts = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model.logits(x), y).backward()
    optimizer.step()
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(counts[2:]))
"""


def _page_faults_per_step(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, "-c", _STEPS, mode],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_freed_memory_is_reused_by_the_next_step():
    """A CNN step's tensors page-fault in anew every step under glibc's defaults (the kernel
    zeroes each page); with keep_freed_memory the process reuses the memory it freed."""
    assert _page_faults_per_step("bare") > 2000  # ~14,000 a step (55 MB) on Debian 12's glibc
    assert _page_faults_per_step("kept") < 200


def test_training_keeps_freed_memory(monkeypatch):
    from appliedtorch.classify.training import loop
    from appliedtorch.data.loading import synthetic_in_memory

    seen = []
    monkeypatch.setattr(loop, "keep_freed_memory", seen.append)
    section = MLPParams(epochs=1, batch_size=64)
    loop.train_classifier(synthetic_in_memory("mnist", 128, 64), section)
    assert seen == [CPU]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("MALLOC_MMAP_THRESHOLD_", "65536"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_a_malloc_the_user_chose_is_left_alone(monkeypatch, name, value):
    for var in ("LD_PRELOAD", "GLIBC_TUNABLES", *hardware._MALLOC_ENV):
        monkeypatch.delenv(var, raising=False)
    assert hardware._user_chose_allocation() is None
    monkeypatch.setenv(name, value)
    assert hardware._user_chose_allocation() == name


def test_freed_memory_is_a_cpu_setting():
    assert hardware.keep_freed_memory(torch.device("cuda")) is False
