"""When a backend goes, a UDP flow to it moves to a live backend at once, in every mode.

kube-proxy deletes the node's conntrack entries DNATed to the gone endpoint; the eBPF modes
flush their own CT entries of gone backends. Without either, the client's datagrams keep
following the old entry to an address nobody has any more.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CLI, Lab, running_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

DATA = Path(__file__).parent / "data"
NODEPORT = ("198.19.0.1", 30117)
# a datagram every 100 ms from one source port (one flow); each answer's arrival time printed
CLIENT = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((sys.argv[1], int(sys.argv[2]))); s.settimeout(0.1)\n"
    "end = time.time() + float(sys.argv[3])\n"
    "while time.time() < end:\n"
    "    s.send(b'ping'); t = time.time()\n"
    "    try:\n"
    "        s.recv(100); print(time.time(), flush=True); time.sleep(max(0, 0.1 - (time.time() - t)))\n"
    "    except (socket.timeout, ConnectionRefusedError):\n"
    "        pass\n"
)


def udp_in(lab: Lab, pod: str) -> int:
    """UDP datagrams a pod's namespace has received (/proc/net/snmp InDatagrams)."""
    lines = [l.split() for l in lab.exec(pod, "cat", "/proc/net/snmp").stdout.splitlines() if l.startswith("Udp:")]
    return int(lines[1][lines[0].index("InDatagrams")])


@pytest.mark.parametrize("mode", ["kube-proxy", "kube-proxy-nft", "tunnel", "dsr"])
def test_udp_flow_moves_when_its_backend_is_deleted(mode: str) -> None:
    with running_lab("bg", mode, manifests=[DATA / "udp-echo.yaml"]) as lab:
        pods = [p["name"] for p in lab.status()["pods"] if p["name"].startswith("udpecho")]
        assert len(pods) == 2
        client = subprocess.Popen(
            [*CLI, "exec", "--name", lab.name, "host1", "--", "python3", "-c", CLIENT, *map(str, NODEPORT), "20"],
            stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)
            before = {p: udp_in(lab, p) for p in pods}
            time.sleep(1)
            grown = [p for p in pods if udp_in(lab, p) > before[p] + 3]
            assert len(grown) == 1, ("one backend answers the flow", before, grown)
            t_delete = time.time()
            lab.run("delete", "pod", grown[0])
            t_deleted = time.time()
        finally:
            out, _ = client.communicate(timeout=60)
        t_end = time.time()
        answers = [float(x) for x in out.split()]
        assert [t for t in answers if t < t_delete], "the flow was answered before the delete"
        after = [t for t in answers if t > t_deleted]
        assert after, (mode, "no answer after the delete", t_deleted, answers[-5:])
        # the flow moves at once: no silence longer than ~2 s from the delete to the end of the run
        since = [t_delete] + [t for t in answers if t > t_delete] + [t_end]
        gap = max(b - a for a, b in zip(since, since[1:]))
        assert gap < 2.0, (mode, f"answers stopped for {gap:.1f} s after the backend was deleted")
