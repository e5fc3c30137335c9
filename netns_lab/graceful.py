"""Graceful pod deletion (`delete pod --grace-period S`): a pod terminating for S seconds, then gone.

Kubernetes' order, reproduced on a running lab:

- the delete marks the pod terminating (its metadata.deletionTimestamp is now + S, recorded in
  the topology as `deletionTimestamp`): its endpoints turn serving, not ready, and every proxy
  stops sending new connections to them while open ones go on (kube-proxy: no KUBE-SEP chain for
  it, its conntrack entries untouched; eBPF: out of the selection set, its CT entries kept). When a
  service has no ready endpoint left, the terminating ones are used (kube-proxy's fallback,
  netns_lab/policy.py and ebpf_nodeport/sync.py);
- a Deployment's ReplicaSet makes the replacement pod at once (it counts only active pods);
- the pod's app keeps running: the lab's apps stop at SIGTERM, so the lab models an app that
  drains for its whole grace period, as one with a preStop hook does;
- at the deadline the pod goes as `delete pod` without a grace period does: a Deployment's pod
  is removed (its replacement already runs), a bare pod recreated under its name.

The deadline passes without anyone running a command: a per-lab reaper process
(`python -m netns_lab.apps.grace --lab LAB`, its pid in /run/netns-lab/LAB/grace.pid) sleeps until
the earliest deadline, then finishes the expired deletions under the lab's lock, and exits when
no pod is terminating. `down` finds and kills it like the apps (`-m netns_lab.apps.* --lab LAB`).
"""

from __future__ import annotations

import calendar
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable

from netns_lab import cleanup, dataplane, naming
from netns_lab.k8s import live, manifest
from netns_lab.state import LabState
from netns_lab.topology import topology_to_dict

Progress = Callable[[str], None]
REAPER = "netns_lab.apps.grace"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _quiet(msg: str) -> None:
    """Progress sink that drops messages."""


def deletion_timestamp(grace: int, now: float | None = None) -> str:
    """Kubernetes' deletionTimestamp of a delete made now with `grace` seconds (RFC 3339, UTC, whole seconds up)."""
    return time.strftime(TIME_FORMAT, time.gmtime(math.ceil(now if now is not None else time.time()) + grace))


def deadline(stamp: str) -> float:
    """A deletionTimestamp as seconds since the epoch."""
    return float(calendar.timegm(time.strptime(stamp, TIME_FORMAT)))


def deadlines(st: LabState) -> dict[str, float]:
    """Terminating pods of the lab -> when they go (seconds since the epoch)."""
    return {p.name: deadline(p.deletion_timestamp) for p in st.spec().pods if p.deletion_timestamp}


def terminate(st: LabState, name: str, grace: int, progress: Progress = _quiet) -> dataplane.PodChange:
    """Mark pod `name` terminating for `grace` seconds (a pod already terminating keeps the earlier deadline,
    as a second delete can only shorten it); a Deployment's pod gets its replacement at once. Updates `st`."""
    t0 = time.monotonic()
    topo = st.spec()
    pod = topo.pod(name)
    stamp = deletion_timestamp(grace)
    if pod.terminating and deadline(pod.deletion_timestamp or stamp) <= deadline(stamp):
        stamp, grace = pod.deletion_timestamp or stamp, pod.deletion_grace_period_seconds or grace
    new = manifest.terminate_pod(topo, name, stamp, grace)
    live.reconcile(st, topo, progress)
    rec = st.pods[name]
    made = st.pods[new.name] if new is not None else rec  # the replacement's node and address, if any
    ch = dataplane.PodChange(name, made.node, rec.ip, made.ip, rec.pid or 0, time.monotonic() - t0,
                             new.name if new else None, terminating_until=stamp)
    progress(f"pod {name} terminating until {stamp}: serving open connections, no new ones")
    return ch


def finish(st: LabState, name: str, progress: Progress = _quiet) -> dataplane.PodChange:
    """The end of a terminating pod (its deadline, or a delete without grace): a Deployment's pod is removed
    (its replacement runs already), a bare pod recreated under its name as `delete pod` does. Updates `st`."""
    t0 = time.monotonic()
    topo = st.spec()
    pod = topo.pod(name)
    rec = st.pods[name]
    node, old_ip = rec.node, rec.ip
    if manifest.workload_of(topo, pod) is not None:
        topo.pods.remove(pod)
        live.reconcile(st, topo, progress)
        return dataplane.PodChange(name, node, old_ip, "", 0, time.monotonic() - t0, None, gone=True)
    pod.deletion_timestamp = pod.deletion_grace_period_seconds = None
    st.topology = topology_to_dict(topo)
    return dataplane.delete_pod(st, name, progress)


def expired(st: LabState, now: float | None = None) -> list[str]:
    """Terminating pods whose deadline has passed."""
    t = now if now is not None else time.time()
    return [name for name, at in deadlines(st).items() if at <= t and name in st.pods]


def pid_path(lab: str) -> str:
    """Where the lab's reaper records its pid."""
    return str(naming.run_dir(lab) / "grace.pid")


def reaper_pid(lab: str) -> int | None:
    """The lab's running reaper, if any (a recorded pid that is no longer ours does not count)."""
    try:
        with open(pid_path(lab)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if cleanup.is_lab_app(pid, lab) else None


def ensure_reaper(lab: str) -> int:
    """Start the lab's reaper unless one runs (called under the lab's lock); its pid."""
    pid = reaper_pid(lab)
    if pid is not None:
        return pid
    log = naming.logs_dir(lab) / "grace.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-u", "-m", REAPER, "--lab", lab], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                cwd="/", env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    with open(pid_path(lab), "w") as f:
        f.write(f"{proc.pid}\n")
    return proc.pid


def forget_reaper(lab: str) -> None:
    """The reaper's exit (under the lab's lock): its pid file goes, so the next graceful delete starts one."""
    try:
        os.unlink(pid_path(lab))
    except FileNotFoundError:
        pass
