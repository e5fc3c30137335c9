"""`netns-lab lesson`: the whole lesson walked on a lab (netns_lab/lesson.py does the walking)."""

from __future__ import annotations

import click

from netns_lab import naming
from netns_lab.commands.common import console, lab_option, require_root
from netns_lab.lab import check_ebpf_prereqs


@click.command(
    epilog="""\b
Examples:
  netns-lab lesson                 # on lab "default" (brought up, and taken down at the end)
  netns-lab lesson --keep          # leave the lab up in DSR mode afterwards
  netns-lab lesson --name mine     # on another lab (an existing one is left up)
"""
)
@lab_option
@click.option("--keep", is_flag=True, help="Leave the lab up at the end (a lab that was already up is always left up).")
def lesson(lab: str | None, keep: bool) -> int:
    """Walk the lesson on a lab: kube-proxy SNAT, eBPF source-IP preservation, then DSR seen with tcpdump."""
    from netns_lab import lesson as walk

    require_root()
    check_ebpf_prereqs("tunnel")
    return walk.run(lab or naming.DEFAULT_LAB, keep, console())


COMMANDS = (lesson,)
