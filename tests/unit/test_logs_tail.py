"""`netns-lab logs --tail N`: each pod's last N lines, as kubectl logs --tail cuts them."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from netns_lab.commands.members import _last, logs

LOG = "a\nb\nc\n"


@pytest.mark.parametrize("lines, expected", [
    (-1, LOG),            # the default: the whole log
    (0, ""),
    (1, "c\n"),
    (2, "b\nc\n"),
    (10, LOG),            # more than there is: all of it
])
def test_last_lines(lines: int, expected: str) -> None:
    assert _last(LOG, lines) == expected


def test_tail_below_minus_one_is_refused() -> None:
    result = CliRunner().invoke(logs, ["--tail", "-2", "-l", "app=x"])
    assert result.exit_code == 2 and "--tail" in result.output
