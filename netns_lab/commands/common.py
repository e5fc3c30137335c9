"""What every command shares: the console, --name (or $NETNS_LAB), -n/--namespace, -l and -o options, the root check, the lab handle and error shape.

Every failure the user can cause ends as one line on stderr and a non-zero exit (LabGroup,
and cli.main for usage errors), before anything is changed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from netns_lab import naming
from netns_lab.errors import LabError
from netns_lab.lab import PROG, Lab
from netns_lab.state import LabState

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def console() -> Console:
    """stdout console; wide when piped so tables don't wrap in logs and CI."""
    return Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)


def require_root() -> None:
    """LabError unless running as root (namespaces, iptables and BPF all need it)."""
    if os.geteuid() != 0:
        raise LabError(f"must run as root (try: sudo {PROG} {' '.join(sys.argv[1:])})".rstrip())


def _check_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: validate --name against the naming rule."""
    if value is None:
        return None
    try:
        return naming.check_lab_name(value)
    except LabError as exc:
        raise click.BadParameter(str(exc)) from None


lab_option = click.option(
    "--name",
    "lab",
    default=None,
    envvar="NETNS_LAB",
    callback=_check_name,
    metavar="LAB",
    help=f"Lab name (default: $NETNS_LAB, else {naming.DEFAULT_LAB}).",
)
namespace_option = click.option(
    "-n", "--namespace", default=None, metavar="NS",
    help="Kubernetes namespace (the lab is --name; without -n, names and selectors match in every namespace).",
)
namespace_default_option = click.option(
    "-n", "--namespace", default=None, metavar="NS",
    help="Kubernetes namespace (the lab is --name; without -n: default, as in kubectl).",
)
selector_option = click.option("-l", "--selector", metavar="KEY=VALUE", help="The pods with these labels (e.g. app=summary).")
output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format."
)


def lab_handle(lab: str | None, out: Console | None = None) -> Lab:
    """The Lab for --name (default lab if none), printing its progress as `  ok <step>` lines on `out`."""
    if out is None:
        return Lab(lab or naming.DEFAULT_LAB)
    return Lab(
        lab or naming.DEFAULT_LAB,
        progress=lambda msg: out.print(f"  [green]ok[/] {escape(msg)}", highlight=False),
        failure=lambda msg: out.print(f"  [red]failed[/]: {escape(msg)}", highlight=False),
    )


def load_lab(lab: str | None) -> LabState:
    """The state of --name's lab, or LabError naming the labs that do exist."""
    return lab_handle(lab).state()


class LabGroup(click.Group):
    """Group that turns LabError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; report LabError without a traceback."""
        try:
            return super().invoke(ctx)
        except LabError as exc:
            click.echo(f"{PROG}: error: {exc}", err=True)
            ctx.exit(1)
