"""Shared pytest set-up: tests marked `root` are skipped (with a reason) when not running as root."""

from __future__ import annotations

import os

import pytest

# The project's own plugin (also installed as a pytest11 entry point; listing it here makes
# a checkout without a fresh install use the checkout's copy).
pytest_plugins = ["netns_lab.pytest_plugin", "pytester"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip root-marked tests for non-root runs; CI runs as root, so there nothing is skipped."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, iptables, BPF): run via sudo ./setup.sh test")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
