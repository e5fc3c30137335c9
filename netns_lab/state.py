"""Lab state on disk: /run/netns-lab/<lab>/state.json (atomic writes) and a flock so CLI calls don't interleave.

The state is a plain JSON document so later work (the eBPF dataplane, `mode`, `patch`) can
add keys without a schema change here. Keys written by this module:

    version, lab, status ("building" | "ready"), created, updated, mode,
    topology (YAML-shaped dict), members {name: {kind, netns, address?, pod_block?, node?}},
    pods {name: {node, app, ip, netns, host_ifname, pid, log, created?}} (created: pods made on a running lab),
    services [{name, cluster_ip, ports: [{name, protocol, port, target_port, node_port, backends}]}],
    felix {bpfEnabled, bpfExternalServiceMode, bpfKubeProxyIptablesCleanupEnabled, bpfDSROptoutCIDRs}
        (FelixConfiguration "default"'s spec; netns_lab/felix.py is its model),
    kubeproxy {installed, nodes}, dataplane {...} (written by netns_lab/dataplane.py)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from netns_lab import felix, naming
from netns_lab.errors import LabError

STATE_VERSION = 1
MODES = felix.MODES
EBPF_MODES = tuple(m for m in MODES if m != "kube-proxy")


def felix_for_mode(mode: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The felix spec dict for a mode, other fields of `base` kept (felix.py is the model; this is its dict form)."""
    return felix.for_mode(felix.FelixConfig.from_spec(base), mode).to_spec()


def load(lab: str, path: Path | None = None) -> dict[str, Any] | None:
    """The lab's state, or None when it has none; LabError if the file is unreadable."""
    p = path or naming.state_path(lab)
    try:
        with open(p) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read lab state {p}: {exc}") from None


def save(lab: str, state: dict[str, Any], path: Path | None = None) -> None:
    """Write the state atomically: a temp file in the same directory, fsync, rename over the old one."""
    p = path or naming.state_path(lab)
    p.parent.mkdir(parents=True, exist_ok=True)
    state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def lock(lab: str, timeout: float = 60.0, path: Path | None = None) -> Iterator[None]:
    """Hold the lab's flock for the duration of the block (waits up to `timeout` seconds).

    `down` deletes the lock file with the lab, so after acquiring we check that the file we
    locked is still the one at the path; if not, another process removed it meanwhile and we
    lock the new one instead.
    """
    p = path or naming.lock_path(lab)
    deadline = time.monotonic() + timeout
    fd = _acquire(lab, p, deadline)
    try:
        yield
    finally:
        os.close(fd)  # releases the flock


def _acquire(lab: str, p: Path, deadline: float) -> int:
    """Open and flock the lock file at `p`, retrying if it is replaced meanwhile; returns the fd."""
    while True:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # directory removed between mkdir and open: retry
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise LabError(f"lab {lab!r} is busy: another netns-lab command holds {p}") from None
                    time.sleep(0.05)
            try:
                same = os.stat(p).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def list_labs() -> list[str]:
    """Labs with a state directory under /run/netns-lab."""
    try:
        return sorted(d.name for d in naming.RUN_ROOT.iterdir() if d.is_dir() and naming.LAB_RE.match(d.name))
    except FileNotFoundError:
        return []
