"""`netns-lab bench`: the bench's options and output; netns_lab/bench/ measures (see its package docstring)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from netns_lab.commands.common import console, require_root
from netns_lab.errors import LabError
from netns_lab.lab import check_ebpf_prereqs


def _services(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    """Click callback: parse --services."""
    from netns_lab.bench.config import parse_services

    try:
        return parse_services(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _writable(path: Path | None, what: str, suffix: str) -> None:
    """LabError unless `path` can be written (checked before measuring for minutes)."""
    if path is None:
        return
    if path.suffix.lower() != suffix:
        raise LabError(f"{what} {str(path)!r} must end in {suffix}")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise LabError(f"{what} {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise LabError(f"{what} {str(path)!r} is not writable")


def _preflight(plot_file: Path | None, save: Path | None) -> None:
    """Everything that can fail before a lab is built: root, tools, BCC, matplotlib, output paths."""
    _writable(plot_file, "--plot file", ".png")
    _writable(save, "--save file", ".json")
    if plot_file is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise LabError("--plot needs matplotlib: pip install 'ebpf-nodeport[bench]' (setup.sh installs it)") from None
    require_root()
    if shutil.which("iperf3") is None:
        raise LabError("bench needs iperf3: apt-get install iperf3 (./setup.sh does)")
    check_ebpf_prereqs("tunnel")
    from netns_lab.bench import rrtool

    rrtool.binary()  # compiled now (cached): a missing compiler is one line before anything is built


@click.command(
    "bench",
    epilog="""\b
Examples:
  netns-lab bench --quick                          # about 5 minutes on 2 cores (full: 17)
  netns-lab bench --plot bench.png --save bench.json
  netns-lab bench --quick --services 1,100 -o json | jq .targets
  netns-lab bench --from-json bench.json --plot bench.png   # render a saved run again
  netns-lab bench --from-json bench.json -o markdown        # its tables as Markdown (docs)
  netns-lab bench --scale --save scale.json        # lab scale: 20 nodes / 500 pods, 100,000 services
\b
Brings up its own two labs (names bn<hex> and bn<hex>d) and always removes them, also on
failure or Ctrl-C. See docs/bench.md for what each figure means.""",
)
@click.option("--quick", is_flag=True, help="One round, shorter samples (under 5 minutes on 2 cores).")
@click.option("--services", "services", default="1,1000,10000", show_default=True, callback=_services,
              metavar="N,N,...", help="Extra service counts for the scaling runs.")
@click.option("--rounds", type=click.IntRange(1, 20), default=None,
              help="Visits of every mode (default: 1 with --quick, else 2).")
@click.option("-o", "--output", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True,
              help="Output format (json: every raw sample, the figures and the targets; markdown: the tables).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the PNG plot (latency vs services, throughput per mode).")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON document to this file.")
@click.option("--scale", is_flag=True,
              help="Measure lab scale instead: up / mode tunnel / mode kube-proxy / down of the default lab and a "
                   "20-node, 500-pod lab, and 100,000 services programmed per dataplane (about 9 minutes).")
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Render a saved JSON document instead of measuring.")
def bench(quick: bool, services: tuple[int, ...], rounds: int | None, output: str, plot_file: Path | None,
          save: Path | None, scale: bool, from_json: Path | None) -> int:
    """Measure throughput, CPU per Gbit, small-packet UDP rate, TCP_RR/TCP_CRR, new-connection latency, scaling
    with services, programming time and per-packet BPF cost for direct routing, kube-proxy (iptables and
    nftables), tunnel and dsr, and check the targets (--scale: the lab itself at size)."""
    from netns_lab.bench import config, report

    if scale and (quick or plot_file is not None):
        raise LabError("--scale is a section of its own: it takes neither --quick nor --plot")
    if from_json is not None:
        doc = _load(from_json)
    elif scale:
        _preflight(None, save)
        doc = _measure_scale()
    else:
        _preflight(plot_file, save)
        cfg = config.preset(quick, services, rounds)
        doc = report.document(_measure(cfg))
    if save is not None:
        save.write_text(json.dumps(doc, indent=1) + "\n")
    scale_doc = doc.get("kind") == "scale"
    if plot_file is not None and not scale_doc:
        from netns_lab.bench import plot

        plot.plot(doc, plot_file)
    if scale_doc:
        from netns_lab.bench import scale as scale_mod

        render = scale_mod.render
    else:
        render = report.render
    if output == "json":
        click.echo(json.dumps(doc, indent=1))
    elif output == "markdown":
        md = report.Markdown()
        render(md, doc)
        click.echo(md.text(), nl=False)
    else:
        render(console(), doc)
        if plot_file is not None and not scale_doc:
            console().print(f"plot written to {plot_file}", highlight=False)
    return 0


def _load(path: Path) -> dict[str, Any]:
    """A saved bench document (raw part re-summarised, so older summaries never linger)."""
    from netns_lab.bench import report

    try:
        raw = json.loads(path.read_text())
        if raw.get("kind") == "scale":
            return raw
        return report.document({k: v for k, v in raw.items() if k not in ("summary", "targets")})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabError(f"--from-json {str(path)!r} is not a bench document: {exc}") from None


def _measure_scale() -> dict[str, Any]:
    """The scale section, one line per step on stderr; its labs are removed also on failure."""
    import secrets

    from netns_lab.bench import scale as scale_mod

    err = Console(stderr=True)
    return scale_mod.run(f"bs{secrets.token_hex(3)}", lambda msg: err.print(msg, highlight=False))


def _measure(cfg: Any) -> dict[str, Any]:
    """Run the bench with a progress bar on stderr."""
    from netns_lab.bench import runner

    err = Console(stderr=True)
    columns = [TextColumn("[progress.description]{task.description}", table_column=None), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=not sys.stderr.isatty()) as progress:
        task = progress.add_task("bench", total=cfg.steps())

        def step(msg: str) -> None:
            progress.update(task, advance=1, description=msg[:60].ljust(60))

        return runner.run(cfg, step)


COMMANDS = (bench,)
