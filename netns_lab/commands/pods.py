"""`netns-lab delete pod`: kubectl's pod deletion, the pod recreated with a new address and its services following."""

from __future__ import annotations

import click

from netns_lab.commands.common import console, lab_handle, lab_option, require_root
from netns_lab.errors import LabError
from netns_lab.lab import PROG

POD_KINDS = ("pod", "pods", "po")


@click.command(
    "delete",
    epilog="""\b
Examples (the lesson restarts pods after enabling eBPF):
  netns-lab delete pod customer
  netns-lab delete pod -l app=summary       # summary-1 and summary-2
\b
The pod is recreated at once with a new address, its app restarted, and the services'
backends re-programmed (kube-proxy's rules, or the BPF maps in the eBPF modes).
""",
)
@lab_option
@click.argument("kind", metavar="pod")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--selector", metavar="KEY=VALUE", help="Delete the pods with these labels (e.g. app=summary).")
def delete(lab: str | None, kind: str, names: tuple[str, ...], selector: str | None) -> int:
    """Delete pods as kubectl does; each is recreated (new address) and the services follow it."""
    if kind.lower() not in POD_KINDS:
        raise LabError(f"unknown resource kind {kind!r}: only pods can be deleted (e.g. {PROG} delete pod customer)")
    if not names and not selector:
        raise click.UsageError("give pod NAMEs or -l KEY=VALUE")
    require_root()
    out = console()
    handle = lab_handle(lab)
    for ch in handle.delete_pods(names, selector):
        out.print(f'pod "{ch.pod}" deleted; recreated on {ch.node} as {ch.new_ip} '
                  f"(was {ch.old_ip}), backends re-programmed ({ch.seconds:.2f}s)", highlight=False)
    return 0


COMMANDS = (delete,)
