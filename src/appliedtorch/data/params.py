"""The `data` section of params.yaml: the datasets' source, network limits, synthetic sizes.

python -m appliedtorch.params params.yaml     # checks this section with the others
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from appliedtorch.core.params import MAX_SEED, MAX_TIMEOUT, Section

MAX_RETRIES = 5  # back-off doubles from 0.5 s (each wait at most 8 s): 5 retries wait 15.5 s


class SyntheticSizes(Section):
    """Sizes of the generated stand-ins for MNIST and CIFAR-10 (`data.source: synthetic`)."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    # At most twice upstream's sizes: what a mirror's files may hold (appliedtorch.data.download.fetch).
    mnist_train: int = Field(60000, gt=0, le=120_000)
    mnist_test: int = Field(10000, gt=0, le=20_000)
    cifar10_train: int = Field(50000, gt=0, le=100_000)
    cifar10_test: int = Field(10000, gt=0, le=20_000)


class DataParams(Section):
    """Where the datasets come from and how long fetching them may take."""

    # upstream | synthetic | a directory | an http(s):// base URL laid out like upstream
    source: str = Field("upstream", min_length=1, max_length=4096)
    timeout: float = Field(10.0, gt=0, le=MAX_TIMEOUT)  # seconds any one network wait may take
    file_timeout: float = Field(900.0, gt=0, le=24 * MAX_TIMEOUT)  # seconds for a whole file
    retries: int = Field(2, ge=0, le=MAX_RETRIES)  # extra attempts per URL, backing off 2x
    # A transfer slower than low_speed_limit bytes/s over low_speed_time seconds stops (curl's
    # --speed-limit/--speed-time): a trickling server is given up on in about half a minute.
    low_speed_limit: float = Field(1024.0, ge=0, le=2**40)  # 0: no speed limit
    low_speed_time: float = Field(30.0, gt=0, le=MAX_TIMEOUT)
    synthetic: SyntheticSizes = SyntheticSizes()

    bound_notes: ClassVar[dict[str, str]] = {
        "retries": (
            ": each retry waits twice as long as the one before (0.5 s, 1 s, 2 s, ..., at most "
            f"8 s), so {MAX_RETRIES} retries already wait 15.5 s per file"
        )
    }
