"""netns-lab command line: the group, assembled from netns_lab/commands/ (one module per group of commands).

The commands are thin: they parse, check root, call the lab API (netns_lab/lab.py) and print.
Every failure the user can cause ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from netns_lab.commands import bench, cache, diags, felix, kubectl, lesson, lifecycle, members, study
from netns_lab.commands.common import CONTEXT, LabGroup
from netns_lab.lab import PROG
from netns_lab.state import NAMESPACE_HINT


@click.group(cls=LabGroup, context_settings=CONTEXT)
@click.version_option(package_name="ebpf-nodeport", prog_name=PROG)
def cli() -> None:
    """The yaobank cluster of Calico's "native service handling" lesson, in network namespaces.

    \b
    Quick start (as root):
      netns-lab up                                   # kube-proxy mode, lab "default"
      netns-lab exec host1 -- curl -s 198.19.0.1:30180
      netns-lab logs -n yaobank -l app=customer -f   # shows 198.19.0.1: kube-proxy SNAT
      netns-lab mode tunnel                          # eBPF: the log shows host1, 198.19.15.254
      netns-lab mode dsr                             # replies skip the ingress node
      netns-lab lesson                               # the whole lesson, step by step
      netns-lab down
    """


for _group in (lifecycle, members, kubectl, felix, lesson, study, bench, diags, cache):
    for _command in _group.COMMANDS:
        cli.add_command(_command)

# The one line each command gets in its group's --help list (click would cut the docstring's first
# sentence at the terminal's width, mid-phrase); the docstring stays the command's own --help text.
SHORT_HELP = {
    ("apply",): "Create or update a manifest's objects in a running lab",
    ("bench",): "Measure the lesson's performance claims, every mode",
    ("cache",): "List or clear the datapath's on-disk compile cache",
    ("delete",): "Delete pods (their ReplicaSet replaces them) or -f objects",
    ("diags",): "Save a lab's debugging state to a directory",
    ("down",): "Remove a lab and everything it made",
    ("dump",): "Decode one kind of BPF map on every node (eBPF modes)",
    ("exec",): "Run a command in a node's, host's or pod's namespace",
    ("explain",): "Walk one curl from host1 through the maps and trace",
    ("get",): "Show pods, services, endpointslices or nodes (kubectl)",
    ("lesson",): "Walk the whole lesson, showing what each step prints",
    ("list",): "List the labs on this machine (also half-built ones)",
    ("logs",): "Print pods' access logs, in the lesson's format",
    ("mode",): "Show the service dataplane, or switch it live",
    ("patch",): "Patch FelixConfiguration (calicoctl) or a Service",
    ("scale",): "Set a Deployment's replicas; pods follow live",
    ("status",): "Show a lab's nodes, pods, services and mode",
    ("topology",): "Print a topology in the form `up --topology` reads",
    ("trace",): "Stream the datapath's per-packet decisions",
    ("up",): "Build a lab running Kubernetes YAML (default: yaobank)",
    ("cache", "clear"): "Remove every cached compile (the next load compiles)",
    ("cache", "ls"): "List the cached compiles: key and size",
    ("dump", "affinity"): "ClientIP session affinity: client -> backend, time left",
    ("dump", "backends"): "Backends (nat_be): service and ordinal -> pod address",
    ("dump", "config"): "The cfg map: node address, VXLAN, MTU, mode flags",
    ("dump", "conntrack"): "Connections: client -> frontend -> backend, state, age",
    ("dump", "counters"): "Packets per program and reason, drops included",
    ("dump", "nat"): "Service frontends (nat_fe) and their backends",
    ("dump", "routes"): "Pod blocks, node addresses and DSR opt-out CIDRs",
}


def _short_helps(group: click.Group, prefix: tuple[str, ...] = ()) -> None:
    """Give every command (and subcommand) its SHORT_HELP line; one without keeps click's default."""
    for name, command in group.commands.items():
        command.short_help = SHORT_HELP.get((*prefix, name), command.short_help)
        if isinstance(command, click.Group):
            _short_helps(command, (*prefix, name))


_short_helps(cli)


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry: usage errors as one line (exit 2), LabError as one line (exit 1)."""
    try:
        rv = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else PROG
        if isinstance(exc, click.NoSuchOption) and exc.option_name == "-n":  # the lab's old short form
            click.echo(f"{PROG}: error: {where} has no -n: {NAMESPACE_HINT}", err=True)
        else:
            click.echo(f"{PROG}: error: {exc.format_message()} (see: {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
