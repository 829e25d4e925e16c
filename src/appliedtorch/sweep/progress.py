"""A sweep's progress: one line per finished point and the count of done / running / left; on a
terminal, a tqdm bar under the lines.

    baseline  s42  acc 91.20 %  node 10.0.0.7/3cd35af5  41.2 s   [done 1, running 2, left 3]
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

from appliedtorch.sweep.grid import Point


def accuracy(metrics: dict[str, Any]) -> str:
    """The test accuracy of each trained section, as `acc 91.20 %` (`mlp 91.20 %, cnn ...`)."""
    found = {s: m["test_accuracy"] for s, m in metrics.items() if "test_accuracy" in m}
    if len(found) == 1:
        return f"acc {100 * next(iter(found.values())):.2f} %"
    return ", ".join(f"{s} {100 * v:.2f} %" for s, v in found.items()) or "acc -"


class Progress:
    """Counts and lines for `total` points, `done` of them finished before this run began."""

    def __init__(self, total: int, done: int, slots: int, out: TextIO | None = None):
        self.total, self.done, self.slots, self.failures = total, done, slots, 0
        self.out = out or sys.stdout
        terminal = self.out.isatty() and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=done, unit="run", disable=not terminal, leave=False)
        if done:
            self.line(f"{done} of {total} already pushed: not trained again")

    def line(self, text: str) -> None:
        """One line above the bar."""
        if self.bar.disable:
            print(text, file=self.out, flush=True)
        else:
            self.bar.write(text, file=self.out)

    def counts(self, pending: int) -> str:
        running = min(pending, self.slots)
        failed = f", failed {self.failures}" if self.failures else ""
        return f"[done {self.done}, running {running}, left {pending - running}{failed}]"

    def finished(self, result: dict[str, Any], pending: int) -> None:
        """A point came back."""
        self.done += 1
        self.bar.update(1)
        what = accuracy(result["metrics"]) if result["trained"] else "pushed before"
        self.line(
            f"{result['variant']:<12} s{result['seed']:<4} {what}  node {result['node']}  "
            f"{result['seconds']:.1f} s   {self.counts(pending)}"
        )

    def failed(self, point: Point, reason: str, pending: int) -> None:
        """A point failed for a reason of its own."""
        self.failures += 1
        self.bar.update(1)
        self.line(f"{point.variant:<12} s{point.seed:<4} FAILED: {reason}   {self.counts(pending)}")

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()
