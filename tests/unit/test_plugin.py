"""The pytest plugin is shipped: pyproject's pytest11 entry point names the module that defines the fixture."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path


def test_the_entry_point_names_the_plugin_module() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    entry = pyproject["project"]["entry-points"]["pytest11"]
    assert entry == {"netns_lab.pytest_plugin": "netns_lab.pytest_plugin"}  # keyed by module: no double registration
    assert hasattr(importlib.import_module(entry["netns_lab.pytest_plugin"]), "netns_lab")
