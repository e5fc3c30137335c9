"""Names and paths of everything a lab creates (docs/conventions.md), so clean-up can find them."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from netns_lab.errors import LabError

DEFAULT_LAB = "default"
NS_PREFIX = "nl-"
NETNS_DIR = Path("/run/netns")
RUN_ROOT = Path("/run/netns-lab")
BPF_ROOT = Path("/sys/fs/bpf/netns-lab")
FABRIC = "fabric"
BRIDGE = "br0"
UPLINK = "eth0"
POD_IFNAME = "eth0"
POD_GATEWAY = "169.254.1.1"

LAB_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def check_lab_name(lab: str) -> str:
    """Return `lab` if it follows the naming rule, else raise LabError (no '-' keeps `nl-<lab>-` unambiguous)."""
    if not LAB_RE.match(lab or ""):
        raise LabError(
            f"invalid lab name {lab!r}: use 1-12 characters, a lowercase letter then lowercase letters or digits"
        )
    return lab


def netns(lab: str, member: str) -> str:
    """Network namespace of a lab member: `nl-<lab>-<member>`."""
    return f"{NS_PREFIX}{lab}-{member}"


def ns_prefix(lab: str) -> str:
    """Prefix shared by every namespace of one lab."""
    return f"{NS_PREFIX}{lab}-"


def split_netns(name: str) -> tuple[str, str] | None:
    """Split `nl-<lab>-<member>` into (lab, member); None for names that are not a lab's."""
    if not name.startswith(NS_PREFIX):
        return None
    lab, sep, member = name[len(NS_PREFIX):].partition("-")
    if not sep or not member or not LAB_RE.match(lab):
        return None
    return lab, member


def cali_ifname(lab: str, pod: str) -> str:
    """Node-side name of a pod's veth: `cali` + 11 hex chars of sha1(`<lab>/<pod>`), 15 chars (IFNAMSIZ-1)."""
    return "cali" + hashlib.sha1(f"{lab}/{pod}".encode()).hexdigest()[:11]


def netns_path(name: str) -> Path:
    """Bind-mount path of a named network namespace (what `ip netns` uses)."""
    return NETNS_DIR / name


def run_dir(lab: str) -> Path:
    """Per-lab runtime directory (state, lock, logs)."""
    return RUN_ROOT / lab


def state_path(lab: str) -> Path:
    """The lab's state file."""
    return run_dir(lab) / "state.json"


def lock_path(lab: str) -> Path:
    """The flock file serialising CLI calls on one lab."""
    return run_dir(lab) / "lock"


def logs_dir(lab: str) -> Path:
    """Directory of the pods' stdout/stderr (access logs)."""
    return run_dir(lab) / "logs"


def log_path(lab: str, pod: str) -> Path:
    """One pod's log file."""
    return logs_dir(lab) / f"{pod}.log"


def bpf_dir(lab: str) -> Path:
    """Pinned BPF objects of a lab: `/sys/fs/bpf/netns-lab/<lab>/<node>/...`."""
    return BPF_ROOT / lab


def pin_dir(lab: str, node: str) -> Path:
    """One node's pinned maps and programs: `/sys/fs/bpf/netns-lab/<lab>/<node>`."""
    return bpf_dir(lab) / node
