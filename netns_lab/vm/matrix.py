"""The kernels of the matrix and the cache key of their images (pure data, unit-tested)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Kernel:
    """One kernel of the matrix: the Debian suite whose linux-image-amd64 it is."""

    name: str  # what the user types: 5.10, 6.1, 6.12
    suite: str  # Debian suite that ships it
    release: str  # Debian release number, for messages


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        Kernel("5.10", "bullseye", "11"),
        Kernel("6.1", "bookworm", "12"),
        Kernel("6.12", "trixie", "13"),
    )
}

# The guest userland is always this suite (Debian 12, what setup.sh targets); other
# kernels get only their linux-image and linux-headers unpacked into it.
USERLAND_SUITE = "bookworm"

# Bumped when the image recipe (not setup.sh) changes in a way that needs a rebuild.
RECIPE_VERSION = "1"


def select_kernels(names: list[str]) -> list[Kernel]:
    """The kernels named on the command line (all of them when none), or ValueError."""
    if not names:
        return list(KERNELS.values())
    unknown = [n for n in names if n not in KERNELS]
    if unknown:
        raise ValueError(f"unknown kernel {', '.join(unknown)} (known: {', '.join(KERNELS)})")
    return [KERNELS[n] for n in dict.fromkeys(names)]


def setup_packages(setup_sh: str) -> list[str]:
    """The Debian packages setup.sh installs: the words of its `pkgs=(...)` array."""
    m = re.search(r"^\s*pkgs=\(([^)]*)\)", setup_sh, re.MULTILINE)
    if not m:
        raise ValueError("setup.sh has no pkgs=(...) array")
    return [w.strip("\"'").replace("$arch", "amd64") for w in m.group(1).split()]


def image_key(packages: list[str], extra: str = "") -> str:
    """Short hash naming a cached image: changes with setup.sh's package list or the recipe."""
    text = "\n".join([RECIPE_VERSION, *sorted(packages), extra])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def debian_mirror(sources: list[str]) -> str:
    """The Debian archive URI this machine's apt uses (deb822 URIs: or one-line deb lines)."""
    for text in sources:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("#"):
                continue
            m = re.match(r"URIs:\s*(\S+)", line) or re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if m and re.search(r"/debian/?$", m.group(1)):
                return m.group(1).rstrip("/")
    raise ValueError("no Debian archive found in apt's sources")


# What the VM runs when the pytest words name no test path: tests/bpf and tests/lab, found by
# recursion from tests/ so that `--ignore=tests/lab` works (pytest never ignores a path given
# on its command line).
DEFAULT_PYTEST = ["tests", "--ignore=tests/unit"]


def pytest_argv(words: list[str], exists: Callable[[str], bool]) -> list[str]:
    """The guest's pytest arguments: the user's words, after the default paths unless a word
    is a test path (a file, directory or node id whose path exists in the checkout)."""
    names_a_path = any(not w.startswith("-") and exists(w.split("::", 1)[0]) for w in words)
    return list(words) if names_a_path else [*DEFAULT_PYTEST, *words]
