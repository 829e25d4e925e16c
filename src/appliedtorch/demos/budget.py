"""How much memory the math demos need, from their params alone: checked before any demo runs.

    check_budget(p)   # "math.gd_steps 100000000 needs ~6.4 GB for gradient descent's path ..."

Two knobs grow with the params: the FFT's samples (about a dozen float64 arrays of that length:
time, signal, spectrum, amplitudes, the figure's copies) and gradient descent's path, kept as
a list of Python floats (~32 bytes each) and drawn point by point (as many again).
"""

from __future__ import annotations

from typing import Any

import torch

from appliedtorch.machine.budget import Need, check_device, check_memory

FFT_ARRAYS = 12
PATH_BYTES = 64  # per gradient-descent step: the float in the path list, and its plotted copy


def estimate(cfg: Any) -> Need:
    """The demos' memory need, in named parts."""
    samples = round(cfg.fft_sample_rate * cfg.fft_duration)
    return Need(
        what=f"math.gd_steps {cfg.gd_steps} with {samples} FFT samples",
        parts={
            f"the FFT of {samples} samples": FFT_ARRAYS * 8 * samples,
            f"gradient descent's path of up to {cfg.gd_steps} steps": PATH_BYTES * cfg.gd_steps,
        },
        hint="lower math.gd_steps or math.fft_sample_rate x math.fft_duration",
    )


def check_budget(params: Any) -> torch.device:
    """Refuse, in one line, a `device` this machine lacks or demos it cannot hold in memory;
    returns the device the device demo will use."""
    device = check_device(params.device)
    check_memory(estimate(params.math), torch.device("cpu"))
    return device
