"""Start and stop a lab's conntrack cleaner (netns_lab/apps/ctclean.py), the process an eBPF mode needs.

Expired conntrack entries otherwise leave the datapath's `ct` map only when their own key is looked up
again (an LRU by default; the plain-hash build never evicts, bpf/lib/maps.h), so while a lab is in an
eBPF mode a per-lab process deletes them every few seconds, as Felix does. The lab's
dataplane switch starts it on the way into an eBPF mode (`up --mode`, `mode`, a felix patch) and stops
it on the way out; `down` (and `down --all`) kill it like every app of the lab, found by its command
line (`-m netns_lab.apps.ctclean --lab LAB`). Its log: /run/netns-lab/LAB/logs/ctclean.log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from netns_lab import cleanup, naming
from netns_lab.apps.ctclean import INTERVAL_S

APP = "netns_lab.apps.ctclean"
__all__ = ["APP", "INTERVAL_S", "cleaner_pids", "ensure", "log_path", "stop"]


def log_path(lab: str) -> Path:
    """The cleaner's log (in the lab's logs directory, so `diags` saves it)."""
    return naming.logs_dir(lab) / "ctclean.log"


def cleaner_pids(lab: str) -> list[int]:
    """The lab's running cleaner(s), by command line (normally one)."""
    return cleanup.lab_app_pids(lab, APP)


def ensure(lab: str) -> int:
    """Start the lab's cleaner unless one runs (called under the lab's lock); its pid."""
    running = cleaner_pids(lab)
    if running:
        return running[0]
    log = log_path(lab)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-u", "-m", APP, "--lab", lab], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                cwd="/", env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    return proc.pid


def stop(lab: str) -> list[int]:
    """Stop the lab's cleaner (SIGTERM, then SIGKILL); the pids stopped."""
    pids = cleaner_pids(lab)
    cleanup.kill(pids)
    return pids
