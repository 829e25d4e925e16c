"""Feedback while an epoch runs: tqdm's bar on a terminal, plain log lines anywhere else.

    for images, labels in Progress(train_batches, epoch=3, epochs=10):
        ...

A bar redraws in place and means nothing in a log file (`dvc exp run ... > log`, a DVC queue,
CI), where a long epoch would otherwise print nothing between its first and last line. There,
every `every` seconds one line says where the epoch is: step, loss, images per second, ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sized
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("appliedtorch.classify.training.loop")

LINE_EVERY_SECONDS = 10.0


class Progress:
    """Iterate `batches` (which has `len` and `samples`), reporting progress as it goes."""

    def __init__(
        self,
        batches: Any,
        epoch: int,
        epochs: int,
        show: bool = True,
        every: float = LINE_EVERY_SECONDS,
    ):
        self.batches, self.epoch, self.epochs, self.every = batches, epoch, epochs, every
        self.loss: str | None = None
        terminal = show and sys.stderr.isatty()
        self.lines = show and not terminal
        self.bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            leave=False,
            mininterval=0.5,
            disable=not terminal,
        )

    def __len__(self) -> int:
        return len(self.batches) if isinstance(self.batches, Sized) else 0

    def __iter__(self) -> Iterator[Any]:
        if not self.lines:
            yield from self.bar
            return
        start = last = time.monotonic()
        total = len(self)
        for step, batch in enumerate(self.batches, start=1):
            yield batch
            now = time.monotonic()
            if now - last >= self.every and step < total:
                last = now
                self._line(step, total, now - start)

    def _line(self, step: int, total: int, seconds: float) -> None:
        images = step / max(total, 1) * getattr(self.batches, "samples", 0)
        eta = seconds / step * (total - step)
        loss = f", loss {self.loss}" if self.loss is not None else ""
        log.info(
            "epoch %d/%d: step %d/%d%s, %.0f images/s, ETA %.0f s",
            self.epoch,
            self.epochs,
            step,
            total,
            loss,
            images / seconds,
            eta,
        )

    def set_postfix(self, loss: str, refresh: bool = False) -> None:
        """The latest checked loss, shown on the bar and in the next line."""
        self.loss = loss
        self.bar.set_postfix(loss=loss, refresh=refresh)

    def close(self) -> None:
        self.bar.close()
