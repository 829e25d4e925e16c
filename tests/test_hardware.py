"""bf16 detection and the CPU peak estimate (core/hardware.py), and `bf16: auto` in the params."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from appliedtorch.classify.loop import TrainConfig
from appliedtorch.classify.params import MLPParams
from appliedtorch.core import hardware
from appliedtorch.core.errors import ParamsError

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
    with caplog.at_level(logging.WARNING, logger="appliedtorch.core.hardware"):
        assert hardware.resolve_bf16(True, CPU) is True  # honoured, but said
        assert hardware.resolve_bf16(True, CPU) is True
    warnings = [r for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warnings) == 1, caplog.text


def test_true_with_native_bf16_is_silent(monkeypatch, caplog):
    _fake_cpu(monkeypatch, "avx2 fma avx512f avx512_bf16")
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="appliedtorch.core.hardware"):
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


def test_train_config_resolves_auto(monkeypatch):
    section = MLPParams(bf16="auto")
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: False)
    assert TrainConfig.from_section("mlp", section, seed=0, device="cpu").bf16 is False
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: True)
    assert TrainConfig.from_section("mlp", section, seed=0, device="cpu").bf16 is True
