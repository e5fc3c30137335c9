"""Bench parameters: --quick and full presets, --services parsing. Pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from netns_lab.bench.topo import MAX_EXTRA

# every service dataplane the lab has: kube-proxy's two backends (iptables, nftables) and both eBPF modes
MODES = ("kube-proxy", "kube-proxy-nft", "tunnel", "dsr")

BACKENDS = ("local", "remote")
DEFAULT_SERVICES = (1, 1000, 10000)


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure. Every list of samples has `rounds` entries per mode."""

    quick: bool = False
    services: tuple[int, ...] = DEFAULT_SERVICES
    rounds: int = 3                 # visits of every mode, in rotated order
    iperf_seconds: float = 4.0      # per throughput sample
    streams: tuple[int, ...] = (1, 4)           # parallel TCP streams, client -> pod (upload)
    download_streams: tuple[int, ...] = (4,)    # pod -> client (iperf3 -R): the reply direction DSR changes
    latency_count: int = 2000       # connections per sequential latency sample
    rate_seconds: float = 3.0       # per concurrent request-rate sample
    concurrency: int = 8
    scaling_count: int = 2000       # connections per latency sample with N extra services
    bpf_runs: int = 5000            # test runs per BPF path
    ab_pairs: int = 10              # dsr/tunnel back-to-back pairs on the path DSR changes (0: none)
    # per-packet workloads: UDP packet rate (iperf3 -u) as (backend, datagram bytes, flows), TCP_RR and TCP_CRR
    udp: tuple[tuple[str, int, int], ...] = (("local", 64, 1), ("local", 64, 16), ("local", 512, 1),
                                             ("local", 512, 16), ("remote", 64, 16))
    udp_seconds: float = 2.0
    rr_seconds: float = 2.0         # per TCP_RR / TCP_CRR sample (both backends)
    modes: tuple[str, ...] = field(default=MODES)

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self)

    def visit_order(self, rnd: int) -> list[str]:
        """Modes in round `rnd`: rotated each round, so no mode always runs first or right after a switch."""
        k = rnd % len(self.modes)
        return list(self.modes[k:] + self.modes[:k])

    def flows(self) -> list[tuple[str, int]]:
        """Throughput samples per backend: (direction, streams), direction "up" (client -> pod) or "down"."""
        return [("up", n) for n in self.streams] + [("down", n) for n in self.download_streams]

    def steps(self) -> int:
        """Progress-bar units: one per measurement or programming action, plus set-up and BPF paths."""
        per_visit = (len(BACKENDS) * len(self.flows()) * 2       # throughput, paired with direct
                     + len(BACKENDS) * 2                         # sequential + concurrent (each paired)
                     + len(self.udp) + len(BACKENDS) * 2         # UDP rate, TCP_RR + TCP_CRR (each paired)
                     + len(self.services) * 3 + 1)               # program+measure, change, remove; switch
        from netns_lab.bench.bpfcost import N_STEPS

        ab = 2 * self.ab_pairs if self.ab_modes() else 0
        return 4 + N_STEPS + self.rounds * len(self.modes) * per_visit + ab

    def ab_modes(self) -> bool:
        """Whether the dsr-vs-tunnel pairs run (both modes measured, pairs asked for)."""
        return self.ab_pairs > 0 and "tunnel" in self.modes and "dsr" in self.modes


def preset(quick: bool, services: tuple[int, ...] = DEFAULT_SERVICES, rounds: int | None = None) -> BenchConfig:
    """The --quick (under 5 minutes here) or full (under 20) configuration. The full run visits every mode
    twice (modes interleaved, rotated): four modes and the per-packet workloads fit 20 minutes on 2 cores."""
    if quick:
        cfg = BenchConfig(quick=True, services=services, rounds=1, iperf_seconds=1.0, streams=(4,), latency_count=600,
                          rate_seconds=1.0, scaling_count=600, bpf_runs=2000, ab_pairs=3, udp_seconds=1.0,
                          rr_seconds=1.0)
    else:
        cfg = BenchConfig(quick=False, services=services, rounds=2, iperf_seconds=3.0, rate_seconds=2.0,
                          scaling_count=1500, ab_pairs=8)
    return cfg if rounds is None else replace(cfg, rounds=rounds)


def parse_services(text: str) -> tuple[int, ...]:
    """'1,1000,10000' -> (1, 1000, 10000): sorted, unique, each 1..MAX_EXTRA (ValueError with one clear line)."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ValueError(f"expected a comma-separated list of service counts, e.g. 1,1000,10000; got {text!r}")
    out = set()
    for t in items:
        if not t.isdigit():
            raise ValueError(f"{t!r} is not a whole number of services")
        n = int(t)
        if not 1 <= n <= MAX_EXTRA:
            raise ValueError(f"{n} services is out of range 1-{MAX_EXTRA}")
        out.add(n)
    return tuple(sorted(out))
