"""A VM's suite as it runs: the line `vm-test` prints every few minutes while pytest is silent on the console.

Under TCG a kernel's suite runs for an hour or two with nothing on the console between "pytest"
and its end. The guest writes pytest's output to the shared results directory as it goes
(`<out>/<kernel>/pytest.log`); this reads how far it got: the last percentage, the file being run,
and how many tests failed so far (pytest's F and E marks).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

INTERVAL_S = 300.0

# pytest's progress lines: "tests/bpf/test_abi.py ..F.s   [  4%]", or without the file name when a
# file's marks wrap onto the next line; the percentage comes once the line is full or the file ends.
_PROGRESS = re.compile(r"^(?P<file>tests/\S+\.py)?\s*(?P<marks>[.FEsxX]*)\s*(?:\[\s*(?P<pct>\d+)%\])?\s*$")

_SUMMARY = re.compile(r"^=+ .* in [\d.]+s( \([\d:]+\))? =+$", re.M)


@dataclass(frozen=True)
class Progress:
    percent: int | None     # of the tests collected, as pytest last printed it
    file: str | None        # the test file running (or the last one started)
    failed: int             # F and E marks so far

    def line(self, minutes: float) -> str:
        pct = "starting" if self.percent is None else f"{self.percent}%"
        where = f", in {self.file}" if self.file else ""
        fails = f", {self.failed} failed so far" if self.failed else ""
        return f"pytest {pct}{where}, {minutes:.0f} min in{fails}"


def pytest_progress(log: str) -> Progress | None:
    """How far the pytest whose output `log` is has got; None before it started, and once its summary
    line ("=== 518 passed ... in 6530.12s ===") says it ended (the guest's next stage speaks for itself)."""
    if "test session starts" not in log or _SUMMARY.search(log):
        return None
    percent: int | None = None
    current: str | None = None
    failed = 0
    for line in log.splitlines():
        m = _PROGRESS.match(line)
        if not m or not (m["file"] or m["marks"]):
            continue
        if m["file"]:
            current = m["file"]
        failed += m["marks"].count("F") + m["marks"].count("E")
        if m["pct"] is not None:
            percent = int(m["pct"])
    return Progress(percent, current, failed)


def ticker(log_path: Path, report: Callable[[str], None], started: float, clock: Callable[[], float],
           interval_s: float = INTERVAL_S) -> tuple[threading.Thread, threading.Event]:
    """A daemon thread reporting `pytest_progress(log_path)` every interval until the event is set."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            try:
                p = pytest_progress(log_path.read_text(errors="replace"))
            except OSError:     # not written yet
                continue
            if p is not None:
                report(p.line((clock() - started) / 60))

    thread = threading.Thread(target=run, name=f"progress-{log_path.parent.name}", daemon=True)
    thread.start()
    return thread, stop
