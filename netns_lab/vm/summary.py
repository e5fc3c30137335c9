"""Per-kernel results: read a VM run's status.env and JUnit XML, format the matrix summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    """What one kernel's VM run produced."""

    kernel: str
    release: str = "?"
    seconds: float = 0.0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    note: str = ""  # why the run has no results (build failure, timeout, ...)

    @property
    def ok(self) -> bool:
        """Passed: setup, pytest and the lesson all exited 0 and the suite ran tests."""
        s = self.status
        return (not self.note and s.get("setup_rc") == "0" and s.get("pytest_rc") == "0"
                and s.get("lesson_rc") == "0" and self.passed > 0)


def read_status(path: Path) -> dict[str, str]:
    """key=value lines written by guest.sh (later lines win)."""
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
    return out


def read_junit(path: Path, r: Result) -> None:
    """Count pytest's JUnit XML test cases into r: passed, failed (incl. errors), skipped + reasons."""
    if not path.exists():
        return
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        skipped = case.find("skipped")
        if skipped is not None:
            r.skipped += 1
            r.skip_reasons[skipped.get("message", "").removeprefix("Skipped: ")] += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            r.failed += 1
            r.failures.append(name)
        else:
            r.passed += 1


def load(kernel: str, out: Path, seconds: float, note: str = "") -> Result:
    """The Result of one kernel's run from its out directory."""
    r = Result(kernel=kernel, seconds=seconds, note=note)
    r.status = read_status(out / "status.env")
    r.release = r.status.get("kernel", "?")
    read_junit(out / "junit.xml", r)
    if not note and not r.status:
        r.note = "the VM wrote no status (did it boot?)"
    return r


def format_table(results: list[Result]) -> str:
    """The matrix summary: one line per kernel, then its skip reasons and failures."""
    lines = [f"{'kernel':7} {'release':24} {'result':6} {'time':>7} {'passed':>6} {'failed':>6} {'skipped':>7}  stages"]
    for r in results:
        stages = " ".join(f"{k[5:]}={v}s" for k, v in r.status.items() if k.startswith("time_"))
        lines.append(f"{r.kernel:7} {r.release:24} {'PASS' if r.ok else 'FAIL':6} {r.seconds:6.0f}s "
                     f"{r.passed:6} {r.failed:6} {r.skipped:7}  {stages}")
        if r.note:
            lines.append(f"    note: {r.note}")
        for key in ("setup_rc", "pytest_rc", "lesson_rc"):
            if r.status.get(key, "0") != "0":
                lines.append(f"    {key.removesuffix('_rc')} exited {r.status[key]}")
        for reason, n in sorted(r.skip_reasons.items()):
            lines.append(f"    skipped {n}: {reason}")
        for name in r.failures:
            lines.append(f"    FAILED {name}")
    return "\n".join(lines)
