"""`netns-lab cache`: the on-disk BPF compile cache (ebpf_nodeport/bpfcache.py), listed or cleared.

Not lab state: `down --all` leaves it; entries are keyed on everything the code depends on,
so clearing is only needed to reclaim space or to force a BCC compile.
"""

from __future__ import annotations

import json

import click

from ebpf_nodeport import bpfcache
from netns_lab.commands.common import require_root


@click.group("cache", epilog="""\b
Examples:
  netns-lab cache ls              # what is cached, one entry per compile
  netns-lab cache clear           # the next lab compiles again
  NETNS_LAB_BPF_CACHE=off netns-lab up --mode tunnel   # compile, use no cache
""")
def cache() -> None:
    """The BPF compile cache ($NETNS_LAB_BPF_CACHE, default /var/cache/netns-lab/bpf; =off disables it)."""


@cache.command(
    "ls",
    epilog="""\b
Examples:
  netns-lab cache ls
  netns-lab cache ls -o json
""",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def cache_ls(output: str) -> int:
    """List the cached compiles (one per source text, defines, kernel and BCC version)."""
    rows = [{"key": p.stem, "bytes": p.stat().st_size, "path": str(p)} for p in bpfcache.entries()]
    if output == "json":
        click.echo(json.dumps({"directory": str(bpfcache.directory() or ""), "entries": rows}, indent=2))
        return 0
    where = bpfcache.directory()
    click.echo(f"{where if where else 'cache off'}: {len(rows)} entries")
    for r in rows:
        click.echo(f"  {r['key']}  {r['bytes']:>8} bytes")
    return 0


@cache.command(
    "clear",
    epilog="""\b
Examples:
  netns-lab cache clear      # the next load compiles with BCC again
""",
)
def cache_clear() -> int:
    """Remove every cached compile (running labs are unaffected)."""
    require_root()
    n = bpfcache.clear()
    click.echo(f"removed {n} cached compile{'s' * (n != 1)} from {bpfcache.directory() or '(cache off)'}")
    return 0


COMMANDS = (cache,)
