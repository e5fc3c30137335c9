"""tcpdump inside a lab namespace for the length of a `with` block, parsed into packets.

The lesson's DSR section is an observation made with tcpdump on the control node;
this makes that observation something a test can assert and `netns-lab lesson` can show.
"""
from __future__ import annotations

import re
import select
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

# "198.19.15.254.57064 > 198.19.0.1.30180: Flags [S], ..."
_LINE = re.compile(r"(?P<src>\d+\.\d+\.\d+\.\d+)\.(?P<sport>\d+) > (?P<dst>\d+\.\d+\.\d+\.\d+)\.(?P<dport>\d+): (?P<rest>.*)")


@dataclass(frozen=True)
class Packet:
    """One captured packet, as tcpdump -n printed it."""
    src: str
    sport: int
    dst: str
    dport: int
    line: str

    @property
    def direction(self) -> str:
        return f"{self.src}:{self.sport} > {self.dst}:{self.dport}"


@dataclass
class Capture:
    """What a capture saw: the raw tcpdump lines and the parsed packets."""
    lines: list[str] = field(default_factory=list)
    packets: list[Packet] = field(default_factory=list)

    def between(self, src: str, dst: str) -> list[Packet]:
        """Packets from address src to address dst (any ports)."""
        return [p for p in self.packets if p.src == src and p.dst == dst]


def parse(lines: list[str]) -> list[Packet]:
    out = []
    for line in lines:
        m = _LINE.search(line)
        if m:
            out.append(Packet(m["src"], int(m["sport"]), m["dst"], int(m["dport"]), line.strip()))
    return out


@contextmanager
def tcpdump(netns: str, bpf_filter: str, interface: str = "any", settle: float = 0.3,
            timeout: float = 10.0) -> Iterator[Capture]:
    """Capture in `netns` while the block runs; the Capture is filled when it exits.

    Waits for tcpdump to report it is listening before the block starts, and lets
    packets in flight arrive (`settle` seconds) before stopping it.
    """
    cmd = ["ip", "netns", "exec", netns, "tcpdump", "-l", "-n", "-i", interface, bpf_filter]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap = Capture()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 0.2)
            if ready:
                msg = proc.stderr.readline()
                if "listening on" in msg:
                    break
                if not msg and proc.poll() is not None:
                    raise RuntimeError(f"tcpdump failed in {netns}: exit {proc.returncode}")
        else:
            raise RuntimeError(f"tcpdump in {netns} did not start within {timeout:.0f}s")
        yield cap
        time.sleep(settle)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        cap.lines = [line for line in out.splitlines() if line.strip()]
        cap.packets = parse(cap.lines)
