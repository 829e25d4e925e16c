"""Progress while an epoch runs: plain lines in a log file, tqdm's bar only on a terminal."""

from __future__ import annotations

import logging
import re
import time

import pytest

from appliedtorch.classify.progress import Progress


class SlowBatches:
    """Ten batches of 32 images, each taking `seconds` to produce."""

    samples = 320

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __len__(self) -> int:
        return 10

    def __iter__(self):
        for i in range(10):
            time.sleep(self.seconds)
            yield i


LINE = re.compile(r"epoch 2/5: step (\d+)/10, loss 0\.1234, (\d+) images/s, ETA (\d+) s")


def test_lines_come_every_few_seconds_when_stderr_is_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="appliedtorch.classify.loop")
    progress = Progress(SlowBatches(0.02), epoch=2, epochs=5, every=0.05)
    progress.set_postfix(loss="0.1234")
    assert list(progress) == list(range(10))  # every batch, in order
    lines = [r.getMessage() for r in caplog.records]
    steps = [int(LINE.fullmatch(line)[1]) for line in lines]
    # A line after every 0.05 s of 0.02 s steps (about every third step), none after the last.
    assert 2 <= len(steps) <= 5 and steps == sorted(steps) and steps[-1] < 10, lines
    rate = int(LINE.fullmatch(lines[0])[2])
    assert 32 * 10 / 0.2 / 3 < rate < 32 / 0.02 * 2  # near 1,600 images/s, sleeps being inexact


def test_no_lines_for_a_quick_epoch_or_when_not_shown(caplog):
    caplog.set_level(logging.INFO, logger="appliedtorch.classify.loop")
    assert len(list(Progress(SlowBatches(0), epoch=1, epochs=1))) == 10  # every 10 s: none
    assert len(list(Progress(SlowBatches(0.02), epoch=1, epochs=1, show=False, every=0))) == 10
    assert caplog.records == []


@pytest.mark.parametrize("terminal", [True, False])
def test_the_bar_is_drawn_on_a_terminal_only(monkeypatch, terminal):
    monkeypatch.setattr("sys.stderr.isatty", lambda: terminal)
    progress = Progress(SlowBatches(0), epoch=1, epochs=1)
    assert progress.bar.disable is not terminal and progress.lines is not terminal
    progress.close()
