"""`netns-lab diags`: a lab's debugging state saved to a directory (kind's `export logs`, Cilium's sysdump).

The collection itself is netns_lab/diags.py; this command checks its arguments and reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from netns_lab import diags as collector
from netns_lab import naming
from netns_lab import state as lab_state
from netns_lab.commands.common import lab_option, load_lab, require_root
from netns_lab.errors import LabError


@click.command(
    "diags",
    epilog="""\b
Examples:
  netns-lab diags --out /tmp/diags               # lab "default"
  netns-lab diags --name mine --out /tmp/diags   # another lab
  netns-lab diags -A --out /tmp/diags -o json    # every lab; print the manifest as JSON
""",
)
@lab_option
@click.option("-A", "--all", "all_labs", is_flag=True, help="Every lab found on this machine.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Directory to create (must not exist, or be empty).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="How to report what was saved.")
def diags(lab: str | None, all_labs: bool, out: Path, output: str) -> int:
    """Save a lab's debugging state to DIR: ip/tc/iptables/nft per node, every pinned map as JSON, counters, pod logs, the state file, the kernel log tail."""
    require_root()
    if all_labs and lab:
        # $NETNS_LAB picks the lab of single-lab commands; only a --name typed beside -A conflicts
        if click.get_current_context().get_parameter_source("lab") is not ParameterSource.ENVIRONMENT:
            raise click.UsageError("give --name or -A, not both")
        lab = None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabError(f"--out {out}: exists and is not an empty directory")
    if all_labs:
        labs = lab_state.list_labs()
    else:
        labs = [lab or naming.DEFAULT_LAB]
        load_lab(labs[0])  # an unknown lab is one clear error, before anything is written
    manifest = collector.collect(labs, out)
    if output == "json":
        click.echo(json.dumps(manifest, indent=2))
    else:
        click.echo(f"saved {len(manifest['files'])} files for {len(labs)} lab(s) "
                   f"({', '.join(labs) or 'none up'}) in {out}")
        for err in manifest["errors"]:
            click.echo(f"  not collected: {err['file']}: {err['error']}")
    return 0


COMMANDS = (diags,)
