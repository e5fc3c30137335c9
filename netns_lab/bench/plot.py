"""The bench's PNG: new-connection latency vs services per mode, and throughput per mode (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netns_lab.bench.config import BACKENDS

COLOURS = {"direct": "#777777", "kube-proxy": "#d62728", "tunnel": "#1f77b4", "dsr": "#2ca02c"}


def plot(doc: dict[str, Any], path: Path) -> None:
    """Write the two-panel figure for a bench document (report.document) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = doc["summary"]
    modes = list(doc["config"]["modes"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))

    for m in modes:
        by_n = s["scaling"].get(m, {})
        ns = sorted(by_n, key=int)
        for b, style in zip(BACKENDS, ("-", "--")):
            ys = [by_n[n][b]["rtt_us"] for n in ns]
            if any(y is not None for y in ys):
                ax1.plot([int(n) for n in ns], ys, style, marker="o", color=COLOURS.get(m), label=f"{m}, {b} backend")
    for b, style in zip(BACKENDS, ("-", "--")):
        d = s["newconn"][b]["sequential"]["direct"]["rtt_us"]
        if d is not None:
            ax1.axhline(d, linestyle=style, color=COLOURS["direct"], linewidth=1, label=f"direct routing, {b}")
    ax1.set_xscale("log")
    ax1.set_xlabel("extra services programmed")
    ax1.set_ylabel("first-packet RTT of a new connection (us)\n(kernel handshake RTT, mean of fastest 90%)")
    ax1.set_title("first-packet latency vs services")
    ax1.set_ylim(bottom=0)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=7)

    keys = list(s["throughput"])
    groups = ["direct"] + modes
    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        vals = []
        for k in keys:
            row = s["throughput"][k]
            v = row["direct"]["gbit_per_s"] if g == "direct" else row[g]["gbit_per_s"]["value"]
            vals.append(v or 0.0)
        ax2.bar([x + i * width - 0.4 + width / 2 for x in range(len(keys))], vals, width, label=g, color=COLOURS.get(g))
    ax2.set_xticks(range(len(keys)))
    labels = []
    for k in keys:
        backend, direction, n = k.split("/")
        labels.append(f"{backend}\n{'download' if direction == 'down' else 'upload'} x{n}")
    ax2.set_xticklabels(labels, fontsize=8)
    ax2.set_ylabel("Gbit/s (iperf3 TCP, median)")
    ax2.set_title("NodePort throughput per mode")
    ax2.grid(True, axis="y", alpha=0.3)
    ax2.legend(fontsize=8)

    mc = doc["machine"]
    fig.suptitle(f"netns-lab bench: {mc['cpus']} x {mc['cpu']}, kernel {mc['kernel']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
