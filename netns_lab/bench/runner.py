"""The bench run: labs up, BPF per-packet costs, then rounds visiting every mode, labs down (always).

Noise control on a small shared machine: the direct lab is up the whole time and every
service-mode sample has a direct-routing partner taken under the same load: for latency the one
client alternates connection by connection between the two labs; throughput and request-rate
samples run back to back. The modes are visited in a rotated order each round, and the report
uses medians over rounds.

The result is one JSON-able dict of raw samples (report.py derives every figure from it).
"""

from __future__ import annotations

import os
import platform
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ebpf_nodeport.abi import EBPF_MODES
from netns_lab import naming
from netns_lab.bench import bpfcost, livecost, measure
from netns_lab.bench import topo as btopo
from netns_lab.bench.config import BACKENDS, BenchConfig
from netns_lab.bench.labs import BenchLabs
from netns_lab.bench.services import Programmer
from netns_lab.errors import LabError

RESULT_VERSION = 1


Step = Callable[[str], None]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:"))
            mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip() or None
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": mem_gb,
        "virtualization": virt,
        "python": platform.python_version(),
        "iperf3": iperf,
        "loadavg_start": os.getloadavg(),
    }


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (like Ctrl-C), so the labs are torn down either way."""
    me = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != me:
            os._exit(1)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Run:
    """One bench run's state and raw results."""

    def __init__(self, cfg: BenchConfig, step: Step, base: str | None = None):
        self.cfg = cfg
        self._t0 = time.monotonic()
        self.timeline: list[tuple[float, str]] = []   # (seconds since start, step done): where the run's time goes

        def timed_step(msg: str) -> None:
            self.timeline.append((round(time.monotonic() - self._t0, 2), msg))
            step(msg)

        self.step = timed_step
        self.base = base or f"bn{secrets.token_hex(3)}"
        self.labs = BenchLabs(self.base)
        self.client_ns = {"direct": f"nl-{self.labs.direct}-{btopo.CLIENT}", "lab": f"nl-{self.labs.lab}-{btopo.CLIENT}"}
        self.res: dict[str, Any] = {
            "version": RESULT_VERSION,
            "config": cfg.to_dict(),
            "machine": machine(),
            "labs": {"service": self.labs.lab, "direct": self.labs.direct},
            "mode_switches": [],
            "throughput": {b: {f"{d}/{n}": {m: [] for m in cfg.modes} for d, n in cfg.flows()} for b in BACKENDS},
            "newconn": {b: {k: {m: [] for m in cfg.modes} for k in ("sequential", "concurrent")} for b in BACKENDS},
            "scaling": {m: {str(n): {"latency": {b: [] for b in BACKENDS}, "program_s": [], "change_one": [],
                                     "remove_s": []} for n in cfg.services} for m in cfg.modes},
            "udp": {f"{b}/{size}/{flows}": {m: [] for m in cfg.modes} for b, size, flows in cfg.udp},
            "rr": {b: {k: {m: [] for m in cfg.modes} for k in ("rr", "crr")} for b in BACKENDS},
            "bpf_cost": None,
            "live_cost": {m: {b: [] for b in BACKENDS} for m in cfg.modes if m in EBPF_MODES},
        }
        self.prog: Programmer | None = None

    # -- the whole run

    def execute(self) -> dict[str, Any]:
        """Measure everything; the labs are removed at the end, also on error or interrupt."""
        t0 = time.monotonic()
        self.res["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.labs.check_free()
        with sigterm_as_interrupt():
            try:
                self._bpf_cost()
                self.step("labs up")
                self.res["labs"]["up"] = self.labs.up()
                self.step("servers up")
                nodes = [n.name for n in self.labs.topo.nodes]
                self.prog = Programmer(self.labs.lab, self.labs.topo, self.labs.pod_ips, nodes)
                self.prog.program([])  # the bench services, in kube-proxy mode (the lab came up in it)
                self.step("bench services programmed")
                for rnd in range(self.cfg.rounds):
                    for mode in self.cfg.visit_order(rnd):
                        self._visit(rnd, mode)
                self._dsr_vs_tunnel()
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish the clean-up even if interrupted again
                try:
                    self.res["labs"]["removed"] = self.labs.teardown()
                finally:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
        self.res["machine"]["loadavg_end"] = os.getloadavg()
        self.res["elapsed_s"] = time.monotonic() - t0
        self.res["timeline"] = self.timeline
        return self.res

    def _bpf_cost(self) -> None:
        """Per-packet cost of each program's hot paths (BPF_PROG_TEST_RUN, own pins, removed at once)."""
        self.step("compiling the datapath for BPF_PROG_TEST_RUN")
        self.res["bpf_cost"] = bpfcost.run(self.base + "t", self.cfg.bpf_runs,
                                           progress=lambda: self.step("BPF_PROG_TEST_RUN paths"))

    # -- one mode

    def _visit(self, rnd: int, mode: str) -> None:
        """Switch the service lab to `mode`, program the bench services, measure everything once."""
        assert self.prog is not None
        self._switch(rnd, mode)
        if mode in EBPF_MODES:
            # every eBPF visit starts as after a fresh load: the previous visit's ~50,000 connections
            # leave entries for their closing timeouts (30-40 s), which the plain-hash map would hold
            # until the lab's cleaner reclaimed them, refusing new flows (DROP_CT_FULL) once full
            self.res.setdefault("ct_cleared", []).append({"round": rnd, "mode": mode, "entries": self.prog.clear_conntrack()})
        self.step(f"round {rnd + 1}: {mode}")
        for backend in BACKENDS:
            for direction, streams in self.cfg.flows():
                self._throughput(mode, backend, direction, streams)
        for backend in BACKENDS:
            self._newconn(mode, backend)
        for backend, size, flows in self.cfg.udp:
            self._udp(mode, backend, size, flows)
        for backend in BACKENDS:
            for kind in ("rr", "crr"):
                self._rr(mode, backend, kind)
        for n in self.cfg.services:
            self._scaling(mode, n)

    def _switch(self, rnd: int | str, mode: str) -> None:
        """`netns-lab mode <mode>` on the service lab (if not there yet), then the bench services again."""
        assert self.prog is not None
        if self.labs.mode != mode:
            secs = self.labs.switch(mode)
            self.res["mode_switches"].append({"round": rnd, "from": self.prog.mode, "to": mode, "s": secs})
            self.prog.set_mode(mode, self.labs.state())
            self.prog.program([])  # the switch programmed the lab's own services only

    def _dsr_vs_tunnel(self) -> None:
        """dsr against tunnel where DSR makes a difference (remote backend, download: the reply path),
        in back-to-back pairs with alternating order: the two members of a pair see the same machine,
        which the per-mode visits, minutes apart, do not."""
        if not self.cfg.ab_modes():
            return
        streams = max(self.cfg.download_streams or self.cfg.streams)
        addr, port = self.labs.nodeport("remote", "iperf")
        pairs = self.res.setdefault("dsr_vs_tunnel", {"backend": "remote", "direction": "down",
                                                      "streams": streams, "pairs": []})["pairs"]
        for i in range(self.cfg.ab_pairs):
            pair: dict[str, Any] = {}
            for mode in (("tunnel", "dsr") if i % 2 == 0 else ("dsr", "tunnel")):
                self._switch("dsr-vs-tunnel", mode)
                pair[mode] = measure.throughput(self.client_ns["lab"], addr, port, streams,
                                                self.cfg.iperf_seconds, True)
                self.step(f"dsr vs tunnel, pair {i + 1}: {mode}")
            pairs.append(pair)

    def _throughput(self, mode: str, backend: str, direction: str, streams: int) -> None:
        """One direct and one service sample, back to back."""
        d_addr, d_port = self.labs.direct_target(backend, "iperf")
        s_addr, s_port = self.labs.nodeport(backend, "iperf")
        secs, down = self.cfg.iperf_seconds, direction == "down"
        what = f"throughput {backend} {direction} x{streams}"
        direct = measure.throughput(self.client_ns["direct"], d_addr, d_port, streams, secs, down)
        self.step(f"{mode}: {what} (direct)")
        svc = measure.throughput(self.client_ns["lab"], s_addr, s_port, streams, secs, down)
        self.step(f"{mode}: {what}")
        self.res["throughput"][backend][f"{direction}/{streams}"][mode].append({"direct": direct, "mode": svc})

    def _udp(self, mode: str, backend: str, size: int, flows: int) -> None:
        """UDP packet rate, one direct and one service sample back to back (the order alternating by visit)."""
        d_addr, d_port = self.labs.direct_target(backend, "iperf")
        s_addr, s_port = self.labs.nodeport(backend, "iperf")
        secs = self.cfg.udp_seconds
        direct = measure.udp_rate(self.client_ns["direct"], d_addr, d_port, size, flows, secs)
        svc = measure.udp_rate(self.client_ns["lab"], s_addr, s_port, size, flows, secs)
        self.res["udp"][f"{backend}/{size}/{flows}"][mode].append({"direct": direct, "mode": svc})
        self.step(f"{mode}: UDP {size} B x{flows} {backend}")

    def _rr(self, mode: str, backend: str, kind: str) -> None:
        """TCP_RR or TCP_CRR, one direct and one service sample back to back."""
        d = self.labs.direct_target(backend, "rr")
        s = self.labs.nodeport(backend, "rr")
        secs = self.cfg.rr_seconds
        direct = measure.request_response(self.client_ns["direct"], *d, kind, secs)
        svc = measure.request_response(self.client_ns["lab"], *s, kind, secs)
        self.res["rr"][backend][kind][mode].append({"direct": direct, "mode": svc})
        self.step(f"{mode}: TCP_{kind.upper()} {backend}")

    def _newconn(self, mode: str, backend: str) -> None:
        """New-connection samples paired with direct routing: sequential (latency; the client alternates
        between the two labs, connection by connection) and concurrent (request rate; back to back)."""
        d = self.labs.direct_target(backend, "http")
        s = self.labs.nodeport(backend, "http")
        alt = (self.client_ns["direct"], *d)

        def sequential() -> dict[str, Any]:
            return measure.connections(self.client_ns["lab"], *s, count=self.cfg.latency_count, alt=alt)

        if mode in EBPF_MODES:
            svc, live = self._with_live_cost(sequential)
            self.res["live_cost"][mode][backend].append(live)
        else:
            svc = sequential()
        direct = svc.pop("alt")
        self.res["newconn"][backend]["sequential"][mode].append({"direct": direct, "mode": svc})
        self.step(f"{mode}: new connections {backend} (sequential)")
        kw = {"duration": self.cfg.rate_seconds, "concurrency": self.cfg.concurrency}
        direct = measure.connections(self.client_ns["direct"], *d, **kw)
        svc = measure.connections(self.client_ns["lab"], *s, **kw)
        self.res["newconn"][backend]["concurrent"][mode].append({"direct": direct, "mode": svc})
        self.step(f"{mode}: new connections {backend} (concurrent)")

    def _with_live_cost(self, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        """fn() with the kernel's BPF run-time statistics on; (its result, ns per run of each attached program)."""
        pins = {n.name: str(naming.pin_dir(self.labs.lab, n.name)) for n in self.labs.topo.nodes}
        with livecost.stats_enabled() as on:
            before = livecost.snapshot(pins) if on else {}
            out = fn()
            after = livecost.snapshot(pins) if on else {}
        return out, livecost.delta(before, after)

    def _scaling(self, mode: str, n: int) -> None:
        """N extra services: time to program them, latency with them, time to change one, time to remove them."""
        assert self.prog is not None
        extras = btopo.extra_services(n)
        rec = self.res["scaling"][mode][str(n)]
        rec["program_s"].append(self.prog.program(extras))
        for backend in BACKENDS:
            alt = (self.client_ns["direct"], *self.labs.direct_target(backend, "http"))

            def sample() -> dict[str, Any]:
                return measure.connections(self.client_ns["lab"], *self.labs.nodeport(backend, "http"),
                                           count=self.cfg.scaling_count, alt=alt)

            if mode in EBPF_MODES:
                svc, live = self._with_live_cost(sample)
                rec.setdefault("live_cost", {b: [] for b in BACKENDS})[backend].append(live)
            else:
                svc = sample()
            rec["latency"][backend].append({"direct": svc.pop("alt"), "mode": svc})
        self.step(f"{mode}: {n} services programmed, latency measured")
        rec["change_one"].append(self.prog.change_one(extras))
        self.step(f"{mode}: one of {n} services changed")
        rec["remove_s"].append(self.prog.program([]))
        self.step(f"{mode}: {n} services removed")


def run(cfg: BenchConfig, step: Step, base: str | None = None) -> dict[str, Any]:
    """Run the bench; the raw result document. LabError on failure (labs removed by then)."""
    try:
        return Run(cfg, step, base).execute()
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"bench step timed out: {' '.join(map(str, exc.cmd))[:200]}") from None
