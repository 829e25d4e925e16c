"""Progress while an epoch runs: plain lines in a log file, tqdm's bar only on a terminal."""

from __future__ import annotations

import logging
import re
import types

import pytest

from appliedtorch.classify.training import progress as progress_module
from appliedtorch.classify.training.progress import Progress


class Clock:
    now = 0.0


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """Progress reads a clock that only the batches advance: exact, on a busy machine too."""
    fake = Clock()
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=lambda: fake.now))
    return fake


class SlowBatches:
    """Ten batches of 32 images, each taking `seconds` of the test clock to produce."""

    samples = 320

    def __init__(self, seconds: float, clock: Clock | None = None):
        self.seconds, self.clock = seconds, clock

    def __len__(self) -> int:
        return 10

    def __iter__(self):
        for i in range(10):
            if self.clock is not None:
                self.clock.now += self.seconds
            yield i


LINE = re.compile(r"epoch 2/5: step (\d+)/10, loss 0\.1234, (\d+) images/s, ETA (\d+) s")


def test_lines_come_every_few_seconds_when_stderr_is_not_a_terminal(caplog, clock):
    caplog.set_level(logging.INFO, logger="appliedtorch.classify.training.loop")
    progress = Progress(SlowBatches(2.0, clock), epoch=2, epochs=5, every=5.0)
    progress.set_postfix(loss="0.1234")
    assert list(progress) == list(range(10))  # every batch, in order
    lines = [r.getMessage() for r in caplog.records]
    # 2 s a batch, a line once 5 s have passed since the last: after steps 3, 6 and 9 (6 s each
    # time), none after the last step (the epoch's own line follows it).
    assert [int(LINE.fullmatch(line)[1]) for line in lines] == [3, 6, 9], lines
    # 3 batches of 32 images in 6 s: 16 images/s; 7 batches to go at 2 s: ETA 14 s.
    assert [LINE.fullmatch(lines[0])[i] for i in (2, 3)] == ["16", "14"]


def test_no_lines_for_a_quick_epoch_or_when_not_shown(caplog, clock):
    caplog.set_level(logging.INFO, logger="appliedtorch.classify.training.loop")
    assert len(list(Progress(SlowBatches(0.5, clock), epoch=1, epochs=1))) == 10  # 5 s: none
    assert (
        len(list(Progress(SlowBatches(2.0, clock), epoch=1, epochs=1, show=False, every=0))) == 10
    )
    assert caplog.records == []


@pytest.mark.parametrize("terminal", [True, False])
def test_the_bar_is_drawn_on_a_terminal_only(monkeypatch, terminal):
    monkeypatch.setattr("sys.stderr.isatty", lambda: terminal)
    progress = Progress(SlowBatches(0), epoch=1, epochs=1)
    assert progress.bar.disable is not terminal and progress.lines is not terminal
    progress.close()
