"""From raw samples to figures: medians, ratios to direct routing, the targets met or missed, tables.

Pure functions of the result document (runner.py's), so a saved JSON can be rendered again and
the arithmetic is unit-tested without a lab. Conventions:
- a figure is the median over rounds of each sample's own statistic (e.g. the median of the
  per-sample connect p50s);
- `x_direct` is the median of per-pair ratios: each mode sample over the direct-routing sample
  taken with it (interleaved connection by connection for latency, back to back for throughput
  and request rates). Load bursts from other work on a small machine hit both members of a pair,
  so this ratio is much steadier than either figure; the `direct` column is the median of all of
  the run's direct samples of that kind (`x_direct_of_medians` is in the JSON). Where lower is
  better (latency, CPU per Gbit) a ratio above 1 is worse;
- latency with N services, `x_smallest`: each sample divided by the direct-routing sample taken
  right after it, then the median at N over the median at the smallest N. Dividing by direct
  takes out the machine's load drift between the samples (they are tens of seconds apart);
  `x_smallest_raw` is the plain ratio of the medians.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from netns_lab.bench.config import BACKENDS
from netns_lab.bench.stats import median, paired_ratio, ratio, spread

EBPF = ("tunnel", "dsr")
FIRST_PACKET = ("syn_rtt_us", "tmean90")   # the kernel's handshake RTT, mean of the fastest 90%
TARGET_THROUGHPUT = 0.9
TARGET_SCALING = 1.1
TARGET_NS = 100.0          # an established packet, per program run
TARGET_X_LRU = 3.5         # the same, as a multiple of one conntrack LRU hit timed in the same run
TARGET_NEW_NS = 500.0      # a new flow's first packet, per program run
TARGET_PROGRAM_S = 1.0
TARGET_N = 10000
TARGET_RUN_S = {True: 300.0, False: 1200.0}   # --quick under 5 minutes, the full run under 20
KUBE_PROXY = ("kube-proxy", "kube-proxy-nft")
UDP_KEYS = ("pps", "softirq_ns_per_pkt", "busy_ns_per_pkt", "loss")
RR_KEYS = ("rate_per_s", "p50_us", "p99_us", "softirq_us_per_tx", "busy_us_per_tx")


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    """d[path0][path1]... or None if any step is missing."""
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _pairs(samples: list[dict[str, Any]], *path: str) -> tuple[list[Any], list[Any]]:
    """(mode values, direct values) of paired samples at `path`."""
    return [_get(s["mode"], *path) for s in samples], [_get(s["direct"], *path) for s in samples]


def _figure(samples: list[dict[str, Any]], direct_all: list[Any], *path: str) -> dict[str, Any]:
    """The mode's median, the run's direct median, the paired ratio (x_direct), the ratio of the medians, the spread."""
    mode, partners = _pairs(samples, *path)
    direct = median([_get(d, *path) for d in direct_all])
    value = median(mode)
    return {"value": value, "direct": direct, "x_direct": paired_ratio(mode, partners),
            "x_direct_of_medians": ratio(value, direct), "spread": spread(mode),
            "n": len([v for v in mode if v is not None])}


def _normalised(samples: list[dict[str, Any]], *path: str) -> float | None:
    """Median over samples of mode value / its direct partner: a figure with the machine's drift divided out."""
    mode, partners = _pairs(samples, *path)
    return paired_ratio(mode, partners)


# --------------------------------------------------------------------------- summary


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """Every reported figure, derived from the raw samples."""
    modes = list(res["config"]["modes"])
    out: dict[str, Any] = {"throughput": {}, "newconn": {}, "scaling": {}, "programming": {}}

    for backend, by_streams in res["throughput"].items():
        for streams, by_mode in by_streams.items():
            all_direct = [s["direct"] for m in modes for s in by_mode.get(m, [])]
            row: dict[str, Any] = {"direct": {k: median([d[k] for d in all_direct]) for k in ("gbit_per_s", "cpu_s_per_gbit")}}
            for m in modes:
                row[m] = {k: _figure(by_mode.get(m, []), all_direct, k) for k in ("gbit_per_s", "cpu_s_per_gbit")}
            out["throughput"][f"{backend}/{streams}"] = row

    metrics = {"rtt_us": ("syn_rtt_us", "tmean90"), "rtt_p99_us": ("syn_rtt_us", "p99"),
               "connect_p50_us": ("connect_us", "p50"), "connect_p99_us": ("connect_us", "p99"),
               "request_p50_us": ("request_us", "p50"), "request_p99_us": ("request_us", "p99"),
               "rate_per_s": ("rate_per_s",)}
    for backend, kinds in res["newconn"].items():
        row = {}
        for kind, by_mode in kinds.items():
            all_direct = [s["direct"] for m in modes for s in by_mode.get(m, [])]
            row[kind] = {"direct": {name: median([_get(d, *p) for d in all_direct]) for name, p in metrics.items()}}
            for m in modes:
                row[kind][m] = {name: _figure(by_mode.get(m, []), all_direct, *p) for name, p in metrics.items()}
        out["newconn"][backend] = row

    for m in modes:
        by_n = res["scaling"].get(m, {})
        ns = sorted(by_n, key=int)
        scal: dict[str, Any] = {}
        prog: dict[str, Any] = {}
        base = {b: _normalised(by_n[ns[0]]["latency"][b], *FIRST_PACKET) for b in BACKENDS} if ns else {}
        for n in ns:
            rec = by_n[n]
            row = {}
            for b in BACKENDS:
                lat = rec["latency"][b]
                fig = _figure(lat, [x["direct"] for x in lat], *FIRST_PACKET)
                first = [_get(x["mode"], *FIRST_PACKET) for x in by_n[ns[0]]["latency"][b]]
                row[b] = {"rtt_us": fig["value"], "direct_rtt_us": fig["direct"], "x_direct": fig["x_direct"],
                          "connect_p50_us": median([_get(x["mode"], "connect_us", "p50") for x in lat]),
                          "request_p50_us": median([_get(x["mode"], "request_us", "p50") for x in lat]),
                          "x_smallest": ratio(_normalised(lat, *FIRST_PACKET), base.get(b)),
                          "x_smallest_raw": ratio(fig["value"], median(first)),
                          "live_ns_per_run": {k: median([x[k]["ns_per_run"] for x in rec.get("live_cost", {}).get(b, [])
                                                         if k in x])
                                              for k in sorted({k for x in rec.get("live_cost", {}).get(b, []) for k in x})}}
            scal[n] = row
            prog[n] = {
                "program_s": median([median(s) for s in rec["program_s"]]),
                "program_max_node_s": median([max(s) for s in rec["program_s"] if s]),
                "change_one_s": median([c["s"] for c in rec["change_one"]]),
                "change_one_method": rec["change_one"][0]["method"] if rec["change_one"] else None,
                "map_update_s": median([c.get("map_update_s") for c in rec["change_one"]]),
                "remove_s": median([median(s) for s in rec["remove_s"]]),
            }
        out["scaling"][m] = scal
        out["programming"][m] = prog

    out["udp"] = {}
    for key, by_mode in (res.get("udp") or {}).items():
        all_direct = [x["direct"] for m in modes for x in by_mode.get(m, [])]
        row = {"direct": {k: median([d.get(k) for d in all_direct]) for k in UDP_KEYS}}
        for m in modes:
            row[m] = {k: _figure(by_mode.get(m, []), all_direct, k) for k in UDP_KEYS}
        out["udp"][key] = row
    out["rr"] = {}
    for backend, kinds in (res.get("rr") or {}).items():
        for kind, by_mode in kinds.items():
            all_direct = [x["direct"] for m in modes for x in by_mode.get(m, [])]
            if not all_direct:
                continue
            row = {"direct": {k: median([d.get(k) for d in all_direct]) for k in RR_KEYS}}
            for m in modes:
                row[m] = {k: _figure(by_mode.get(m, []), all_direct, k) for k in RR_KEYS}
            out["rr"][f"{backend}/{kind}"] = row
    out["claims"] = _claims(out, modes)

    live: dict[str, Any] = {}
    for m, by_b in (res.get("live_cost") or {}).items():
        for b, samples in by_b.items():
            keys = sorted({k for smp in samples for k in smp})
            live.setdefault(m, {})[b] = {k: {"ns_per_run": median([smp[k]["ns_per_run"] for smp in samples if k in smp]),
                                             "runs": median([smp[k]["runs"] for smp in samples if k in smp])}
                                         for k in keys}
    out["live_cost"] = live

    bpf = res.get("bpf_cost") or {}
    out["bpf"] = [{k: p.get(k) for k in ("program", "node", "path", "flow", "reason", "ns_per_packet", "ns_per_packet_repeat")}
                  for p in bpf.get("paths", [])]
    # Per (from, to): into eBPF from kube-proxy loads the programs, tunnel <-> dsr is a map sync.
    switches: dict[str, list[float]] = {}
    for sw in res.get("mode_switches", []):
        switches.setdefault(f"{sw['from']} -> {sw['to']}", []).append(sw["s"])
    out["mode_switch_s"] = {k: median(v) for k, v in switches.items()}
    out["dsr_vs_tunnel"] = _dsr_vs_tunnel(res.get("dsr_vs_tunnel"))
    return out


def _claims(s: dict[str, Any], modes: list[str]) -> list[dict[str, Any]]:
    """eBPF against kube-proxy on the per-packet workloads: per workload and figure, each eBPF mode's
    direct-normalised figure over each kube-proxy backend's (ratios of ratios: both sides were measured
    against their own direct partners, so load drift between the visits divides out)."""
    rows = []
    figures = [("udp", k, "pps", "packets/s", True) for k in s.get("udp", {})]
    figures += [("udp", k, "softirq_ns_per_pkt", "softirq ns/packet", False) for k in s.get("udp", {})]
    figures += [("rr", k, "rate_per_s", "transactions/s", True) for k in s.get("rr", {})]
    figures += [("rr", k, "softirq_us_per_tx", "softirq us/transaction", False) for k in s.get("rr", {})]
    for section, key, fig, label, higher_better in figures:
        row: dict[str, Any] = {"section": section, "key": key, "figure": fig, "label": label,
                               "higher_is_better": higher_better, "ratios": {}}
        for e in (m for m in EBPF if m in modes):
            for k in (m for m in KUBE_PROXY if m in modes):
                row["ratios"][f"{e}/{k}"] = ratio(_get(s, section, key, e, fig, "x_direct"),
                                                  _get(s, section, key, k, fig, "x_direct"))
        rows.append(row)
    return rows


def _dsr_vs_tunnel(ab: dict[str, Any] | None) -> dict[str, Any] | None:
    """Medians of the back-to-back dsr/tunnel pairs: each mode's figures and the per-pair ratios."""
    if not ab or not ab.get("pairs"):
        return None
    pairs = ab["pairs"]
    out: dict[str, Any] = {k: ab[k] for k in ("backend", "direction", "streams")}
    out["pairs"] = len(pairs)
    for k in ("gbit_per_s", "cpu_s_per_gbit"):
        out[k] = {m: median([p[m][k] for p in pairs]) for m in ("tunnel", "dsr")}
        out[f"{k}_dsr_over_tunnel"] = paired_ratio([p["dsr"][k] for p in pairs], [p["tunnel"][k] for p in pairs])
        each = [ratio(p["dsr"][k], p["tunnel"][k]) for p in pairs]
        out[f"{k}_pair_ratios"] = [r for r in each if r is not None]
    return out


# --------------------------------------------------------------------------- targets


def _flows(res: dict[str, Any]) -> list[tuple[str, int]]:
    """(direction, streams) of the run's throughput samples."""
    cfg = res["config"]
    return [("up", n) for n in cfg["streams"]] + [("down", n) for n in cfg.get("download_streams", [])]


def _flow_label(flow: str) -> str:
    """'down/4' -> 'download x4'."""
    d, n = flow.split("/")
    return f"{'download' if d == 'down' else 'upload'} x{n}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "missed")


def targets(summary: dict[str, Any], res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured and met / missed (n/a when not measured)."""
    out: list[dict[str, Any]] = []
    modes = res["config"]["modes"]
    flows = [f"{d}/{n}" for d, n in _flows(res)]
    for m in (x for x in EBPF if x in modes):
        vals = {f: _get(summary, "throughput", f"local/{f}", m, "gbit_per_s", "x_direct") for f in flows}
        known = [v for v in vals.values() if v is not None]
        out.append({"target": f"{m}: NodePort throughput, local backend >= {TARGET_THROUGHPUT}x direct",
                    "measured": ", ".join(f"{_flow_label(f)}: {_x(v)}" for f, v in vals.items()),
                    "verdict": _verdict(all(v >= TARGET_THROUGHPUT for v in known) if known else None)})
    ab = summary.get("dsr_vs_tunnel")
    if ab:
        v, cpu = ab["gbit_per_s_dsr_over_tunnel"], ab["cpu_s_per_gbit_dsr_over_tunnel"]
        out.append({"target": f"dsr >= tunnel throughput, remote backend (download x{ab['streams']}, the reply path "
                              f"DSR changes; {ab['pairs']} back-to-back pairs)",
                    "measured": f"dsr/tunnel {_x(v)}{_range(ab['gbit_per_s_pair_ratios'])} (Gbit/s "
                                f"{_num(ab['gbit_per_s']['dsr'], '{:.1f}')} vs {_num(ab['gbit_per_s']['tunnel'], '{:.1f}')}); "
                                f"CPU s/Gbit dsr/tunnel {_x(cpu)}{_range(ab['cpu_s_per_gbit_pair_ratios'])}",
                    "verdict": _verdict(None if v is None else v >= 1.0)})
    elif "dsr" in modes and "tunnel" in modes:
        vals = {}
        for f in flows:  # each mode against its own direct partners, so load bursts do not decide it
            d = _get(summary, "throughput", f"remote/{f}", "dsr", "gbit_per_s", "x_direct")
            t = _get(summary, "throughput", f"remote/{f}", "tunnel", "gbit_per_s", "x_direct")
            vals[f] = ratio(d, t)
        judged = [v for f, v in vals.items() if f.startswith("down/") and v is not None]
        out.append({"target": "dsr >= tunnel throughput, remote backend (judged on downloads: DSR changes the reply path)",
                    "measured": ", ".join(f"{_flow_label(f)}: dsr/tunnel {_x(v)}" for f, v in vals.items()),
                    "verdict": _verdict(all(v >= 1.0 for v in judged) if judged else None)})
    ns = sorted(res["config"]["services"])
    big, small = (ns[-1], ns[0]) if ns else (None, None)
    for m in modes:
        rows = _get(summary, "scaling", m, str(big)) if big else None
        vals = {b: _get(rows, b, "x_smallest") for b in BACKENDS} if rows else {}
        known = [v for v in vals.values() if v is not None]
        ebpf = m in EBPF
        out.append({"target": f"{m}: new-connection (first-packet) latency at {big} services within {TARGET_SCALING}x of {small}"
                              + ("" if ebpf else " (comparison only)"),
                    "measured": ", ".join(f"{b}: {_x(v)}" for b, v in vals.items()) or "-",
                    "verdict": _verdict(all(v <= TARGET_SCALING for v in known) if known and big != small else None)
                    if ebpf else "-"})
    out += _per_packet_targets(summary.get("bpf", []), lru_hit_ns(res))
    elapsed, quick = res.get("elapsed_s"), res["config"].get("quick", False)
    if elapsed is not None:
        limit = TARGET_RUN_S[bool(quick)]
        out.append({"target": f"bench {'--quick' if quick else 'full run'} under {limit / 60:.0f} minutes",
                    "measured": f"{elapsed:.0f} s (load average {res['machine']['loadavg_start'][0]:.1f} at start, "
                                f"{(res['machine'].get('loadavg_end') or [0])[0]:.1f} at the end)",
                    "verdict": _verdict(elapsed < limit)})
    for m in (x for x in EBPF if x in modes):
        s = _get(summary, "programming", m, str(big), "program_s") if big else None
        out.append({"target": f"{m}: programming {big} services < {TARGET_PROGRAM_S:.0f} s (per node)"
                              + ("" if big == TARGET_N else f" (target is for {TARGET_N})"),
                    "measured": "-" if s is None else f"{s:.3f} s",
                    "verdict": _verdict(None if s is None or big != TARGET_N else s < TARGET_PROGRAM_S)})
    return out


def lru_hit_ns(res: dict[str, Any]) -> float | None:
    """One conntrack LRU hit timed in this run (the building blocks' hot loop): the unit that carries
    between machines, where absolute nanoseconds do not."""
    prims = ((res.get("bpf_cost") or {}).get("primitives") or {}).get("primitives") or {}
    return (prims.get("prim_lru_hit") or {}).get("ns")


def _per_packet_targets(paths: list[dict[str, Any]], lru: float | None) -> list[dict[str, Any]]:
    """Per program: established paths < 100 ns and <= 3.5x one LRU hit; new flows < 500 ns."""
    out: list[dict[str, Any]] = []
    by_flow: dict[tuple[str, str], list[float]] = {}
    for p in paths:
        if p["ns_per_packet"] is not None and p["flow"] in ("established", "new"):
            by_flow.setdefault((p["flow"], p["program"]), []).append(p["ns_per_packet"])
    for (flow, prog), vals in sorted(by_flow.items()):
        span = f"{min(vals):.0f}-{max(vals):.0f} ns/packet over {len(vals)} paths"
        if flow == "new":
            out.append({"target": f"{prog}: new-flow cost < {TARGET_NEW_NS:.0f} ns/packet", "measured": span,
                        "verdict": _verdict(max(vals) < TARGET_NEW_NS)})
            continue
        met = sum(v < TARGET_NS for v in vals)
        out.append({"target": f"{prog}: established-flow cost < {TARGET_NS:.0f} ns/packet",
                    "measured": f"{span} ({met} under)", "verdict": _verdict(max(vals) < TARGET_NS)})
        if lru:
            xs = [v / lru for v in vals]
            out.append({"target": f"{prog}: established-flow cost <= {TARGET_X_LRU}x one conntrack LRU hit",
                        "measured": f"{min(xs):.1f}-{max(xs):.1f}x over {len(xs)} paths ({sum(x <= TARGET_X_LRU for x in xs)} "
                                    f"within; one LRU hit {lru:.0f} ns this run)",
                        "verdict": _verdict(max(xs) <= TARGET_X_LRU)})
    return out


# --------------------------------------------------------------------------- the document


def document(res: dict[str, Any]) -> dict[str, Any]:
    """The JSON output: the raw result plus `summary` and `targets`."""
    summary = summarize(res)
    return {**res, "summary": summary, "targets": targets(summary, res)}


# --------------------------------------------------------------------------- tables


def _key_label(key: str) -> str:
    """'remote/down/4' -> 'remote, download x4'."""
    backend, flow = key.split("/", 1)
    return f"{backend}, {_flow_label(flow)}"


def _range(ratios: list[float]) -> str:
    """' (pairs 0.84-1.07x)': how far single pairs scatter around a median ratio."""
    return f" (pairs {min(ratios):.2f}-{max(ratios):.2f}x)" if len(ratios) > 1 else ""


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _cell(fig: dict[str, Any], fmt: str = "{:.1f}") -> str:
    """'value (ratio)' for a figure with a paired ratio to direct."""
    return f"{_num(fig.get('value'), fmt)} ({_x(fig.get('x_direct'))})"


class Markdown:
    """Stands in for a rich Console in render(): the same tables as Markdown (what docs/bench.md
    and the README show, so a saved run's tables are regenerated, never retyped)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def print(self, obj: Any, **_: Any) -> None:
        """A Table becomes a titled Markdown table; a string a paragraph (rich markup dropped)."""
        if isinstance(obj, Table):
            cols = [_plain(str(c.header)) for c in obj.columns]
            rows = zip(*(c._cells for c in obj.columns)) if obj.columns else []   # rich keeps cells per column
            lines = [f"### {_plain(str(obj.title or ''))}", "", "| " + " | ".join(cols) + " |",
                     "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_plain(str(cell)).replace("|", "\\|") for cell in row) + " |"
                      for row in rows]
            self.parts.append("\n".join(lines))
        else:
            self.parts.append(_plain(str(obj)))

    def text(self) -> str:
        return "\n\n".join(self.parts) + "\n"


def _plain(markup: str) -> str:
    """Text without rich markup ([bold], [green]...[/])."""
    from rich.text import Text

    return Text.from_markup(markup).plain


def _table(title: str, columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    return t


def _udp_label(key: str) -> str:
    """'local/64/16' -> 'local, 64 B, 16 flows'."""
    b, size, flows = key.split("/")
    return f"{b}, {size} B, {flows} flow{'s' if flows != '1' else ''}"


def _render_packets(out: Console | Markdown, s: dict[str, Any], modes: list[str]) -> None:
    """The per-packet workloads: UDP packet rate and its softirq cost, TCP_RR and TCP_CRR, and eBPF vs kube-proxy."""
    if s.get("udp"):
        for fig, title, fmt in (
                ("pps", "UDP packet rate, packets/s delivered (iperf3 -u -b 0 from host1 to the NodePort; higher is better)", "{:.0f}"),
                ("softirq_ns_per_pkt", "UDP: softirq + irq CPU ns per delivered packet (/proc/stat; lower is better)", "{:.0f}"),
                ("loss", "UDP: share of datagrams sent but not delivered", "{:.2f}")):
            t = _table(title, ["backend, datagram, flows", "direct"] + modes)
            for key, row in s["udp"].items():
                t.add_row(_udp_label(key), _num(row["direct"][fig], fmt), *(_cell(row[m][fig], fmt) for m in modes))
            out.print(t)
    if s.get("rr"):
        t = _table("TCP request/response, 1-byte request and reply (TCP_RR: one open connection; TCP_CRR: a new "
                   "connection per transaction, client closes)", ["backend: figure", "direct"] + modes)
        for key, row in s["rr"].items():
            backend, kind = key.split("/")
            for fig, label, fmt in (("rate_per_s", "transactions/s", "{:.0f}"), ("p50_us", "p50 us", "{:.1f}"),
                                    ("p99_us", "p99 us", "{:.0f}"),
                                    ("softirq_us_per_tx", "softirq+irq us/transaction", "{:.1f}"),
                                    ("busy_us_per_tx", "machine CPU us/transaction", "{:.1f}")):
                t.add_row(f"{backend}: TCP_{kind.upper()} {label}", _num(row["direct"][fig], fmt),
                          *(_cell(row[m][fig], fmt) for m in modes))
        out.print(t)
    claims = s.get("claims") or []
    if claims:
        cols = list(claims[0]["ratios"])
        t = _table("eBPF vs kube-proxy on the per-packet workloads: ratio of the direct-normalised figures "
                   "(packets/s, transactions/s: above 1 = eBPF faster; CPU: below 1 = eBPF cheaper)",
                   ["workload: figure"] + cols)
        for c in claims:
            where = _udp_label(c["key"]) if c["section"] == "udp" else f"{c['key'].split('/')[0]}, TCP_{c['key'].split('/')[1].upper()}"
            t.add_row(f"{where}: {c['label']}", *(_x(c["ratios"][k]) for k in cols))
        out.print(t)


def render(out: Console | Markdown, doc: dict[str, Any]) -> None:
    """All tables: throughput, CPU/Gbit, new connections, scaling, programming, BPF cost, targets."""
    res, s = doc, doc["summary"]
    modes = list(res["config"]["modes"])
    mc = res["machine"]
    out.print(f"[bold]netns-lab bench[/] ({'quick' if res['config']['quick'] else 'full'}, {res['config']['rounds']} "
              f"round{'s' if res['config']['rounds'] != 1 else ''}) on {mc['cpus']} x {mc['cpu']}, kernel {mc['kernel']}"
              f"{', ' + mc['virtualization'] if mc.get('virtualization') else ''}; "
              f"{res.get('elapsed_s', 0):.0f} s; load average {mc['loadavg_start'][0]:.2f} at start", highlight=False)
    out.print("each cell: median over rounds; (x): median ratio to the direct-routing sample taken with it "
              "(direct column: median of all direct samples); lower is better for us and CPU", highlight=False)

    t = _table("throughput, Gbit/s (iperf3 TCP between host1 and the NodePort on control; upload: host1 sends)",
               ["backend, direction", "direct"] + modes)
    for key, row in s["throughput"].items():
        t.add_row(_key_label(key), _num(row["direct"]["gbit_per_s"], "{:.2f}"),
                  *(_cell(row[m]["gbit_per_s"], "{:.2f}") for m in modes))
    out.print(t)
    t = _table("CPU seconds per Gbit (iperf3 processes + all softirq/irq time)", ["backend, direction", "direct"] + modes)
    for key, row in s["throughput"].items():
        t.add_row(_key_label(key), _num(row["direct"]["cpu_s_per_gbit"], "{:.3f}"),
                  *(_cell(row[m]["cpu_s_per_gbit"], "{:.3f}") for m in modes))
    out.print(t)

    t = _table("new connections (a fresh TCP connection per request)", ["backend: figure", "direct"] + modes)
    conc = res["config"]["concurrency"]
    labels = [("sequential", "rtt_us", "first-packet RTT us", "{:.1f}"),
              ("sequential", "rtt_p99_us", "first-packet RTT p99 us", "{:.0f}"),
              ("sequential", "connect_p50_us", "connect() p50 us", "{:.0f}"),
              ("sequential", "request_p50_us", "request p50 us", "{:.0f}"),
              ("concurrent", "rate_per_s", f"requests/s, {conc} in flight", "{:.0f}"),
              ("concurrent", "request_p99_us", f"request p99 us, {conc} in flight", "{:.0f}")]
    for b in BACKENDS:
        for kind, key, label, fmt in labels:
            row = s["newconn"][b][kind]
            t.add_row(f"{b}: {label}", _num(row["direct"][key], fmt), *(_cell(row[m][key], fmt) for m in modes))
    out.print(t)

    _render_packets(out, s, modes)

    ns = sorted({n for m in modes for n in s["scaling"].get(m, {})}, key=int)
    t = _table("first-packet RTT (us) with N extra services programmed (x: vs the smallest N, direct-normalised)",
               ["N services"] + [f"{m} {b}" for m in modes for b in BACKENDS])
    for n in ns:
        cells = []
        for m in modes:
            for b in BACKENDS:
                r = _get(s["scaling"], m, n, b) or {}
                cells.append(f"{_num(r.get('rtt_us'), '{:.1f}')} ({_x(r.get('x_smallest'))})")
        t.add_row(n, *cells)
    out.print(t)

    ebpf_modes = [m for m in modes if m in EBPF]
    if any(_get(s["scaling"], m, n, "local", "live_ns_per_run") for m in ebpf_modes for n in ns):
        t = _table("eBPF: from_hep on the ingress node, ns/run in live traffic (kernel BPF stats) with N services",
                   ["N services"] + [f"{m} {b}" for m in ebpf_modes for b in BACKENDS])
        for n in ns:
            t.add_row(n, *(_num(_get(s["scaling"], m, n, b, "live_ns_per_run", "control/from_hep"), "{:.0f}")
                           for m in ebpf_modes for b in BACKENDS))
        out.print(t)

    t = _table("programming time per node, seconds (kube-proxy: iptables-restore; kube-proxy-nft: nft -f; eBPF: NodeDatapath.sync)",
               ["N services"] + [f"{m} {k}" for m in modes for k in ("program", "change 1", "remove")])
    for n in ns:
        cells = []
        for m in modes:
            r = _get(s["programming"], m, n) or {}
            cells += [_num(r.get("program_s"), "{:.3f}"), _num(r.get("change_one_s"), "{:.3f}"), _num(r.get("remove_s"), "{:.3f}")]
        t.add_row(n, *cells)
    out.print(t)
    upd = [(m, n, _get(s["programming"], m, n, "map_update_s")) for m in modes if m in EBPF for n in ns]
    if any(v is not None for _, _, v in upd):
        out.print("eBPF, the single map write that changes one service: "
                  + ", ".join(f"{m} N={n}: {v * 1e6:.0f} us" for m, n, v in upd if v is not None), highlight=False)
    ab = s.get("dsr_vs_tunnel")
    if ab:
        t = _table(f"dsr vs tunnel, {ab['pairs']} back-to-back pairs ({ab['backend']} backend, "
                   f"{_flow_label(ab['direction'] + '/' + str(ab['streams']))}): medians, (x) median of dsr/tunnel per pair",
                   ["figure", "tunnel", "dsr"])
        for k, label, fmt in (("gbit_per_s", "Gbit/s", "{:.2f}"), ("cpu_s_per_gbit", "CPU s per Gbit", "{:.3f}")):
            t.add_row(label, _num(ab[k]["tunnel"], fmt), f"{_num(ab[k]['dsr'], fmt)} ({_x(ab[k + '_dsr_over_tunnel'])})")
        out.print(t)
    sw = ", ".join(f"{k}: {v:.2f} s" for k, v in sorted(s["mode_switch_s"].items()) if v is not None)
    if sw:
        out.print(f"mode switch (netns-lab mode, median): {sw}", highlight=False)

    cal = (res.get("bpf_cost") or {}).get("calibration", {})
    t = _table(f"per-packet cost, BPF_PROG_TEST_RUN: path minus an empty program (the harness, "
               f"{cal.get('harness_overhead_ns') or 0:.0f} ns), median of {cal.get('runs_per_path', '?')} paired runs",
               ["program", "node", "flow", "path", "ns/packet", "x LRU hit", f"hot loop (repeat {cal.get('repeat', '?')})"])
    lru = lru_hit_ns(res)
    for p in s["bpf"]:
        x = p["ns_per_packet"] / lru if lru and p["ns_per_packet"] is not None else None
        t.add_row(p["program"], p["node"], p["flow"], p["path"], _num(p["ns_per_packet"], "{:.0f}"),
                  _num(x, "{:.1f}"), _num(p.get("ns_per_packet_repeat"), "{:.0f}"))
    out.print(t)

    prims = ((res.get("bpf_cost") or {}).get("primitives") or {})
    if prims.get("primitives"):
        t = _table(f"what the building blocks cost here (hot loop of {prims.get('repeat')} runs, empty program subtracted)",
                   ["operation", "ns"])
        for p in prims["primitives"].values():
            t.add_row(p["what"], _num(p["ns"], "{:.0f}"))
        out.print(t)

    live = s.get("live_cost") or {}
    cols = [(m, b) for m in live for b in live[m]]
    if cols:
        keys = sorted({k for m, b in cols for k in live[m][b]})
        t = _table("live per-packet cost of the attached programs, ns/run (kernel BPF stats, sequential new connections)",
                   ["node/program"] + [f"{m} {b}" for m, b in cols])
        for k in keys:
            t.add_row(k, *(_num(_get(live[m][b], k, "ns_per_run"), "{:.0f}") for m, b in cols))
        out.print(t)

    t = _table("targets", ["target", "measured", "verdict"])
    for tg in doc["targets"]:
        colour = {"met": "green", "missed": "red"}.get(tg["verdict"], "")
        t.add_row(tg["target"], tg["measured"], f"[{colour}]{tg['verdict']}[/]" if colour else tg["verdict"])
    out.print(t)
