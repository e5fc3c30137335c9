"""healthCheckNodePort on every node: the table each node's health server answers from, and the servers.

kube-proxy serves the health check port of every externalTrafficPolicy Local service on every
node (Calico's and Cilium's eBPF proxies do the same), so this runs in every mode: one
`netns_lab.apps.healthcheck` process per node namespace, started when the first such service
appears, found again by its command line (`--lab L --node N`) and stopped with the lab's other
processes by `down` (cleanup.py's naming convention). The lab writes each node's table on every
endpoint change; the server re-reads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from netns_lab import cleanup, naming
from netns_lab.state import LabState

APP = "netns_lab.apps.healthcheck"


def table_path(lab: str, node: str) -> Path:
    """Where node's health table lives (under the lab's run directory: removed with it)."""
    return naming.run_dir(lab) / "healthcheck" / f"{node}.json"


def tables(st: LabState) -> dict[str, dict[int, dict[str, Any]]]:
    """node -> health check port -> {namespace, name, localEndpoints}: the node's ready local endpoints of
    the service (its first port's, as kube-proxy counts one service's endpoints)."""
    out: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in st.nodes()}
    for svc in st.services:
        if not svc.health_check_node_port or not svc.ports:
            continue
        ns, _, name = svc.name.partition("/")
        for node in out:
            local = {b.pod for b in svc.ports[0].backends
                     if not b.terminating and b.pod in st.pods and st.pods[b.pod].node == node}
            out[node][svc.health_check_node_port] = {"namespace": ns, "name": name, "localEndpoints": len(local)}
    return out


def server_pids(lab: str, node: str) -> list[int]:
    """The node's health server processes, by their command line."""
    found = []
    for pid in cleanup._all_pids():
        argv = cleanup._cmdline(pid)
        if APP in argv and _arg(argv, "--lab") == lab and _arg(argv, "--node") == node:
            found.append(pid)
    return found


def _arg(argv: list[str], flag: str) -> str | None:
    """The value after `flag` in argv."""
    return next((argv[i + 1] for i in range(len(argv) - 1) if argv[i] == flag), None)


def _write(path: Path, table: dict[int, dict[str, Any]]) -> None:
    """Replace the table atomically (the server never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(k): v for k, v in sorted(table.items())}))
    os.replace(tmp, path)


def sync(st: LabState) -> None:
    """Write every node's table; start a node's server when it has a port to serve and none runs."""
    for node, table in tables(st).items():
        path = table_path(st.lab, node)
        _write(path, table)
        if table and not server_pids(st.lab, node):
            _start(st, node, path)


def _start(st: LabState, node: str, path: Path) -> None:
    """Launch the node's server detached in the node's namespace."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.Popen(["ip", "netns", "exec", st.nodes()[node].netns, sys.executable, "-m", APP,
                      "--lab", st.lab, "--node", node, "--table", str(path)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True, cwd="/", env=env)
