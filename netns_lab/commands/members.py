"""`netns-lab exec | logs`: run a command in a member's namespace, read pods' access logs (by name or -n/-l)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from typing import Any, NoReturn

import click

from netns_lab import naming
from netns_lab.commands.common import lab_handle, lab_option, namespace_option, output_option, require_root, selector_option
from netns_lab.errors import LabError
from netns_lab.state import NAMESPACE_HINT

ACCESS_RE = re.compile(r'^(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<size>\S+)$')


@click.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="""\b
Examples:
  netns-lab exec host1 -- curl -s 198.19.0.1:30180
  netns-lab exec control -- tcpdump -nvi any 'tcp port 30180'
  netns-lab exec --name lab2 node1 -- ip route
""",
)
@lab_option
@click.argument("member")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(lab: str | None, member: str, command: tuple[str, ...]) -> NoReturn:
    """Run COMMAND inside the namespace of MEMBER (node, host, pod or fabric); its exit status is passed through.

    On a node the command runs in the node's cgroup, where connect-time load balancing
    (bpfConnectTimeLoadBalancing) rewrites its connections to ClusterIPs and NodePorts."""
    if member in ("-n", "--namespace"):  # unknown options reach MEMBER here (see context_settings)
        raise click.UsageError(f"exec has no {member}: {NAMESPACE_HINT}")
    if command and command[0] == "--":  # parsing stops at MEMBER, so a separating `--` arrives here
        command = command[1:]
    if not command:
        raise click.UsageError("missing COMMAND after MEMBER")
    if not shutil.which(command[0]):  # the namespace shares our mounts: the same PATH lookup
        raise LabError(f"{command[0]}: command not found")
    require_root()
    handle = lab_handle(lab)
    argv = handle.exec_argv(member, *command)
    handle.join_cgroup(member)   # the node's connect-time LB programs sit on its cgroup
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise LabError(f"cannot run ip netns exec: {exc.strerror}") from None


def parse_access_line(line: str) -> dict[str, Any] | None:
    """One access-log line as a dict (client, time, request, method, path, status, size); None for other lines."""
    m = ACCESS_RE.match(line.rstrip("\n"))
    if not m:
        return None
    d: dict[str, Any] = m.groupdict()
    parts = d["request"].split()
    d["method"] = parts[0] if parts else ""
    d["path"] = parts[1] if len(parts) > 1 else ""
    d["status"] = int(d["status"])
    return d


@click.command(
    epilog="""\b
Examples:
  netns-lab logs -n yaobank -l app=customer --follow   # the lesson's line, as typed
  netns-lab logs customer-648964b964-k8sk4             # one pod by name
  netns-lab logs -l app=summary -o json                # parsed access-log entries of both summary pods
  netns-lab logs -n yaobank -l app=customer --tail 1   # each pod's last line
"""
)
@lab_option
@namespace_option
@click.argument("pod", required=False)
@selector_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted.")
@click.option("--tail", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="Lines of each pod's recent log to show (-1: all), as kubectl's --tail.")
@output_option
def logs(lab: str | None, namespace: str | None, pod: str | None, selector: str | None, follow: bool,
         tail: int, output: str) -> int:
    """Print pods' logs: their apps' access logs in the lesson's format."""
    if not pod and not selector:
        raise click.UsageError("give a POD name or -l KEY=VALUE")
    handle = lab_handle(lab)
    files = []
    try:
        for name in handle.state().select_pods((pod,) if pod else (), selector, namespace):
            path = naming.log_path(handle.name, name)
            try:
                files.append((path, open(path, errors="replace")))
            except FileNotFoundError:
                raise LabError(f"pod {name!r} has no log yet ({path})") from None
        if output == "json" and not follow:
            entries = [e for _, f in files for line in _last(f.read(), tail).splitlines()
                       if (e := parse_access_line(line))]
            click.echo(json.dumps(entries, indent=2))
            return 0
        for _, f in files:
            _emit(_last(f.read(), tail), output)
        while follow:
            chunks = [f.read() for _, f in files]
            for chunk in chunks:
                if chunk:
                    _emit(chunk, output)
            if not any(chunks):
                if not any(p.exists() for p, _ in files):
                    return 0  # the pods (or the lab) are gone
                time.sleep(0.1)
    finally:
        for _, f in files:
            f.close()
    return 0


def _last(text: str, lines: int) -> str:
    """The last `lines` lines of a log (all of it for -1), as kubectl logs --tail cuts it."""
    if lines < 0:
        return text
    kept = text.splitlines(keepends=True)[-lines:] if lines else []
    return "".join(kept)


def _emit(text: str, output: str) -> None:
    """Write log text, or one JSON object per access line when following with -o json."""
    if output == "json":
        for line in text.splitlines():
            if e := parse_access_line(line):
                click.echo(json.dumps(e))
    else:
        sys.stdout.write(text)
    sys.stdout.flush()


COMMANDS = (exec_cmd, logs)
