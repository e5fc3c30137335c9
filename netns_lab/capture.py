"""tcpdump inside a lab namespace for the length of a `with` block, parsed into packets.

The lesson's DSR section is an observation made with tcpdump on the control node;
this makes that observation something a test can assert and `netns-lab lesson` can show.
"""
from __future__ import annotations

import re
import signal
import subprocess
import threading
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
    packets in flight arrive (`settle` seconds) before stopping it. Both pipes are read
    by threads: select() on a buffered text pipe misses lines already read ahead (tcpdump
    writes its three start-up lines at once), and an unread stdout pipe could fill up.
    """
    cmd = ["ip", "netns", "exec", netns, "tcpdump", "-l", "-n", "-i", interface, bpf_filter]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap = Capture()
    out: list[str] = []
    err: list[str] = []
    listening = threading.Event()

    def read_err() -> None:
        for line in proc.stderr:
            err.append(line.rstrip("\n"))
            if "listening on" in line:
                listening.set()
        listening.set()  # EOF: tcpdump is gone

    readers = [threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),
               threading.Thread(target=read_err, daemon=True)]
    for t in readers:
        t.start()
    try:
        if not listening.wait(timeout):
            raise RuntimeError(f"tcpdump in {netns} did not start within {timeout:.0f}s")
        if not any("listening on" in line for line in err):
            proc.wait(5)
            raise RuntimeError(f"tcpdump failed in {netns}: exit {proc.returncode}: {err[-1] if err else ''}")
        yield cap
        time.sleep(settle)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for t in readers:
            t.join(5)
        cap.lines = [line.rstrip("\n") for line in out if line.strip()]
        cap.packets = parse(cap.lines)
