"""One measurement each: iperf3 throughput with its CPU cost, and a run of the new-connection client.

Both run their client in the client's namespace (`ip netns exec`), against servers the bench
started in the backend pods. CPU per Gbit counts what the transfer itself costs on this
machine: the iperf3 client's and server's own CPU time (iperf3 reports it) plus all softirq and
irq time over the run from /proc/stat, which is where veth delivery, routing, netfilter and the
TC programs run. Other processes' user and system time (the machine is shared) is left out; the
whole machine's busy time is kept in the raw numbers too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from netns_lab.bench.stats import cpu_s_per_gbit
from netns_lab.errors import LabError

CLK_TCK = os.sysconf("SC_CLK_TCK")
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


# --------------------------------------------------------------------------- /proc/stat


@dataclass(frozen=True)
class CpuTimes:
    """The machine-wide `cpu` line of /proc/stat, in seconds."""

    user: float = 0.0
    nice: float = 0.0
    system: float = 0.0
    idle: float = 0.0
    iowait: float = 0.0
    irq: float = 0.0
    softirq: float = 0.0
    steal: float = 0.0

    def __sub__(self, other: "CpuTimes") -> "CpuTimes":
        return CpuTimes(*(getattr(self, f) - getattr(other, f) for f in STAT_FIELDS))

    @property
    def busy(self) -> float:
        """Seconds of CPU doing anything (not idle, not waiting, not stolen)."""
        return self.user + self.nice + self.system + self.irq + self.softirq

    @property
    def interrupts(self) -> float:
        """Seconds in softirq and hardirq context: packet processing."""
        return self.irq + self.softirq


def parse_proc_stat(text: str) -> CpuTimes:
    """The aggregate `cpu ` line of /proc/stat text (ValueError if there is none)."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            ticks = [int(x) for x in parts[1:1 + len(STAT_FIELDS)]]
            ticks += [0] * (len(STAT_FIELDS) - len(ticks))
            return CpuTimes(*(t / CLK_TCK for t in ticks))
    raise ValueError("no aggregate cpu line in /proc/stat")


def cpu_times() -> CpuTimes:
    """The machine's CPU times now."""
    with open("/proc/stat") as f:
        return parse_proc_stat(f.read())


# --------------------------------------------------------------------------- iperf3


def in_ns(ns: str, argv: list[str]) -> list[str]:
    """argv run inside named namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


def parse_iperf(doc: dict[str, Any]) -> dict[str, Any]:
    """The figures the bench keeps from `iperf3 -J` output (LabError if iperf3 reported an error)."""
    if doc.get("error"):
        raise LabError(f"iperf3: {doc['error']}")
    end = doc["end"]
    recv = end["sum_received"]
    sent = end.get("sum_sent", {})
    cpu = end.get("cpu_utilization_percent", {})
    seconds = recv.get("seconds") or sent.get("seconds") or 0.0
    return {
        "bits_per_second": recv["bits_per_second"],
        "seconds": seconds,
        "bytes": recv.get("bytes"),
        "retransmits": sent.get("retransmits"),
        "client_cpu_pct": cpu.get("host_total"),
        "server_cpu_pct": cpu.get("remote_total"),
    }


def _run_json(argv: list[str], seconds: float, what: str) -> tuple[dict[str, Any], CpuTimes]:
    """Run a load tool printing one JSON document: (that document, the machine's CPU times over the run)."""
    before = cpu_times()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    spent = cpu_times() - before
    try:
        return json.loads(proc.stdout), spent
    except ValueError:
        raise LabError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[:200]}") from None


def throughput(ns: str, addr: str, port: int, streams: int, seconds: float, download: bool = False) -> dict[str, Any]:
    """iperf3 TCP between `ns` and addr:port (download: the server sends, -R): Gbit/s and CPU s per Gbit."""
    argv = in_ns(ns, ["iperf3", "-c", addr, "-p", str(port), "-t", f"{seconds:g}", "-P", str(streams), "-J",
                      "--connect-timeout", "3000", *(["-R"] if download else [])])
    doc, spent = _run_json(argv, seconds, f"iperf3 to {addr}:{port}")
    r = parse_iperf(doc)
    procs_s = ((r["client_cpu_pct"] or 0.0) + (r["server_cpu_pct"] or 0.0)) / 100.0 * r["seconds"]
    r["cpu_s"] = procs_s + spent.interrupts
    r["softirq_irq_s"] = spent.interrupts
    r["iperf_processes_s"] = procs_s
    r["machine_busy_s"] = spent.busy
    r["gbit_per_s"] = r["bits_per_second"] / 1e9
    r["cpu_s_per_gbit"] = cpu_s_per_gbit(r["cpu_s"], r["bits_per_second"], r["seconds"])
    r["streams"] = streams
    r["direction"] = "down" if download else "up"
    return r


# --------------------------------------------------------------------------- new connections


def connections(ns: str, addr: str, port: int, *, count: int = 0, duration: float = 0.0,
                concurrency: int = 1, alt: tuple[str, str, int] | None = None) -> dict[str, Any]:
    """Run the bench's connection client (netns_lab.bench.conn) in `ns`; its JSON document.

    alt (namespace, address, port): alternate every connection with one to that target (sequential
    only); its result is the document's "alt".
    """
    argv = in_ns(ns, [sys.executable, "-m", "netns_lab.bench.conn", "client", "--addr", addr, "--port", str(port),
                      "--count", str(count), "--duration", f"{duration:g}", "--concurrency", str(concurrency)])
    if alt is not None:
        argv += ["--alt", ",".join(map(str, alt))]
    limit = 60 + duration + count * 0.02
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise LabError(f"connection client to {addr}:{port} failed: {(proc.stderr or proc.stdout).strip()[-300:]}") from None
    for d, (a, p) in ((doc, (addr, port)), (doc.get("alt"), alt[1:] if alt else (None, None))):
        if d is not None and d["completed"] == 0:
            raise LabError(f"no connection to {a}:{p} completed: errors {d['errors']}")
    return doc


# --------------------------------------------------------------------------- per-packet workloads


def udp_rate(ns: str, addr: str, port: int, size: int, flows: int, seconds: float) -> dict[str, Any]:
    """iperf3 UDP at full speed (-b 0) with `size`-byte datagrams over `flows` sockets: packets delivered per second
    and softirq/irq CPU ns per delivered packet (/proc/stat over the run)."""
    argv = in_ns(ns, ["iperf3", "-c", addr, "-p", str(port), "-u", "-b", "0", "-l", str(size), "-P", str(flows),
                      "-t", f"{seconds:g}", "-J", "--connect-timeout", "3000"])
    doc, spent = _run_json(argv, seconds, f"iperf3 -u to {addr}:{port}")
    if doc.get("error"):
        raise LabError(f"iperf3 -u to {addr}:{port}: {doc['error']}")
    recv = doc["end"].get("sum_received") or doc["end"]["sum"]
    sent = recv.get("packets") or 0
    delivered = sent - (recv.get("lost_packets") or 0)
    secs = recv.get("seconds") or seconds
    if delivered <= 0:
        raise LabError(f"iperf3 -u to {addr}:{port}: no datagram delivered")
    return {"size": size, "flows": flows, "seconds": secs, "sent": sent, "delivered": delivered,
            "pps": delivered / secs, "sent_pps": sent / secs, "loss": 1 - delivered / sent if sent else None,
            "softirq_irq_s": spent.interrupts, "machine_busy_s": spent.busy,
            "softirq_ns_per_pkt": spent.interrupts * 1e9 / delivered, "busy_ns_per_pkt": spent.busy * 1e9 / delivered}


def request_response(ns: str, addr: str, port: int, kind: str, seconds: float, size: int = 1) -> dict[str, Any]:
    """The bench's C tool (rrtool) in `ns`: kind "rr" (one open connection) or "crr" (a new connection per
    transaction); transactions per second, latency p50/p99, and softirq/irq and machine CPU us per transaction."""
    from netns_lab.bench import rrtool

    argv = in_ns(ns, [str(rrtool.binary()), kind, addr, str(port), f"{seconds:g}", str(size)])
    doc, spent = _run_json(argv, seconds, f"{kind} to {addr}:{port}")
    n = doc["transactions"]
    if n == 0:
        raise LabError(f"{kind} to {addr}:{port}: no transaction completed ({doc['errors']} errors)")
    doc.update({"kind": kind, "size": size, "softirq_irq_s": spent.interrupts, "machine_busy_s": spent.busy,
                "softirq_us_per_tx": spent.interrupts * 1e6 / n, "busy_us_per_tx": spent.busy * 1e6 / n})
    return doc
