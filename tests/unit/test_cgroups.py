"""Finding the cgroup v2 mount and naming the node cgroups (netns_lab/cgroups.py)."""

from pathlib import Path

import pytest

from netns_lab import cgroups

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_ONLY = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
SPACE = "50 23 0:40 / /mnt/my\\040cg rw - cgroup2 none rw\n"


@pytest.mark.parametrize("text, want", [
    (HYBRID, Path("/sys/fs/cgroup/unified")),
    (UNIFIED, Path("/sys/fs/cgroup")),
    (V1_ONLY, None),
    (SPACE, Path("/mnt/my cg")),
])
def test_find_cgroup2(text, want):
    assert cgroups.find_cgroup2(text) == want


def test_node_cgroup_path():
    assert cgroups.node_cgroup("lab2", "node1", Path("/x")) == Path("/x/netns-lab/lab2/node1")
