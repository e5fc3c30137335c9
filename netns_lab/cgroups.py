"""One cgroup v2 per lab node, `<cgroup2 mount>/netns-lab/<lab>/<node>`: where connect-time LB attaches.

A cgroup sock_addr program sees the sockets of every process in its cgroup, whatever their
network namespace, so each node gets its own cgroup and `netns-lab exec NODE` puts the
command in it before exec (the programs also check the socket's netns cookie). Found by
naming convention, so `down` (and `down --all`, for the labs it finds) removes them
without the state file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

from netns_lab.errors import LabError

MOUNTINFO = Path("/proc/self/mountinfo")
# where a cgroup2 hierarchy is mounted when the machine has none (kept: other labs may use it)
FALLBACK_MOUNT = Path("/run/netns-lab-cgroup2")
TOP = "netns-lab"


def find_cgroup2(mountinfo: str | None = None) -> Path | None:
    """The first cgroup2 mount point in /proc/self/mountinfo (hybrid layouts have it at /sys/fs/cgroup/unified)."""
    text = MOUNTINFO.read_text() if mountinfo is None else mountinfo
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if sep and post.split(" ", 1)[0] == "cgroup2":
            return Path(pre.split(" ")[4].replace("\\040", " "))
    return None


def cgroup2_root() -> Path:
    """The cgroup2 mount, mounting one at FALLBACK_MOUNT when there is none."""
    found = find_cgroup2()
    if found is not None:
        return found
    FALLBACK_MOUNT.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "cgroup2", "none", str(FALLBACK_MOUNT)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"no cgroup2 mount and cannot mount one on {FALLBACK_MOUNT}: {proc.stderr.strip()}")
    return FALLBACK_MOUNT


def lab_dir(lab: str, root: Path | None = None) -> Path:
    """`<cgroup2>/netns-lab/<lab>`."""
    return (root or cgroup2_root()) / TOP / lab


def node_cgroup(lab: str, node: str, root: Path | None = None) -> Path:
    """`<cgroup2>/netns-lab/<lab>/<node>`."""
    return lab_dir(lab, root) / node


def ensure(lab: str, node: str) -> Path:
    """Create the node's cgroup (and its parents) if missing; its path."""
    path = node_cgroup(lab, node)
    path.mkdir(parents=True, exist_ok=True)
    return path


def join(lab: str, node: str, pid: int = 0) -> bool:
    """Move `pid` (0: the caller) into the node's cgroup when it exists; True if it did."""
    root = find_cgroup2()
    path = node_cgroup(lab, node, root) if root else None
    if path is None or not path.is_dir():
        return False
    (path / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")
    return True


def members(path: Path) -> list[int]:
    """Processes in one cgroup."""
    with contextlib.suppress(OSError):
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    return []


def remove_lab(lab: str) -> bool:
    """Remove the lab's cgroups (processes left in one go to the root cgroup first); True if any existed."""
    root = find_cgroup2()
    if root is None:
        return False
    top = lab_dir(lab, root)
    if not top.is_dir():
        return False
    for node in sorted((d for d in top.iterdir() if d.is_dir()), reverse=True):
        for pid in members(node):
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(f"{pid}\n")
        _rmdir(node)
    _rmdir(top)
    with contextlib.suppress(OSError):
        (root / TOP).rmdir()   # only when no other lab has one
    return True


def _rmdir(path: Path) -> None:
    """rmdir a cgroup; an empty one can still be busy for a moment after its last process left."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        raise LabError(f"cgroup {path} is still in use: {exc.strerror}") from None
