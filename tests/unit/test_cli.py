"""CLI argument and precondition errors: one line on stderr, non-zero exit, nothing created. No root needed."""

from __future__ import annotations

import importlib.util
import os
import re
import secrets

import pytest

from netns_lab import cli, naming
from netns_lab.commands import members


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("netns-lab: error: ")
    return lines[0]


@pytest.fixture
def lab() -> str:
    name = "t1u" + secrets.token_hex(3)
    yield name
    assert not naming.run_dir(name).exists(), "a failed command left a state directory behind"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["up", "--mode", "bogus"], "Invalid value for '--mode'"),
        (["up", "--name", "Bad-Name"], "invalid lab name 'Bad-Name'"),
        (["up", "--name", "waytoolongname"], "invalid lab name"),
        (["down", "--all", "--name", "x"], "give --name or --all, not both"),
        (["exec", "host1"], "Missing argument 'COMMAND...'"),
        (["exec", "host1", "--"], "missing COMMAND after MEMBER"),
        (["logs"], "give a POD name or -l KEY=VALUE"),
        (["status", "-o", "xml"], "Invalid value for '-o' / '--output'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in one_error_line(err)


@pytest.mark.parametrize("argv", [["up"], ["down"], ["exec", "host1", "--", "true"]])
def test_not_root_is_refused(capsys, monkeypatch, lab: str, argv: list[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, _, err = run(capsys, *argv[:1], "--name", lab, *argv[1:])
    assert code == 1
    assert "must run as root" in one_error_line(err)


def test_bad_topology_file_names_file_line_and_field(capsys, tmp_path, lab: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("nodes:\n  - name: n1\n    address: 198.19.0.1\n    role: worker\n")
    code, _, err = run(capsys, "up", "--name", lab, "--topology", str(f))
    assert code == 1
    assert f"{f}:line 4: topology: nodes[0].role: unknown field" in one_error_line(err)


def test_missing_topology_file(capsys, tmp_path, lab: str) -> None:
    code, _, err = run(capsys, "up", "--name", lab, "--topology", str(tmp_path / "none.yaml"))
    assert code == 1
    assert "cannot read topology file" in one_error_line(err)


def test_ebpf_mode_needs_bcc(capsys, monkeypatch, lab: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **kw: None if name == "bcc" else real(name, *a, **kw))
    code, _, err = run(capsys, "up", "--name", lab, "--mode", "dsr")
    assert code == 1
    assert "needs BCC's python module" in one_error_line(err)


def test_ebpf_mode_needs_kernel_headers(capsys, monkeypatch, lab: str) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result((real.sysname, real.nodename, "0.0.0-nothing", real.version, real.machine)))
    code, _, err = run(capsys, "up", "--name", lab, "--mode", "tunnel")
    assert code == 1
    assert "/lib/modules/0.0.0-nothing/build is missing" in one_error_line(err)


def test_read_commands_on_missing_lab(capsys, lab: str) -> None:
    for argv in (["status", "--name", lab], ["logs", "--name", lab, "customer"], ["topology", "--name", lab]):
        code, _, err = run(capsys, *argv)
        assert code == 1
        assert f"no lab named '{lab}'" in one_error_line(err)


def _command_paths(group, prefix=()):
    """Every command and subcommand of the CLI, as the argv that names it."""
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _command_paths(command, (*prefix, name))


@pytest.mark.parametrize("group", [(), ("dump",)], ids=lambda g: " ".join(("netns-lab", *g)))
def test_command_lists_give_each_command_a_whole_line(capsys, group) -> None:
    """`netns-lab --help` (and `dump --help`) list every command with its own short line, not one cut with '...'."""
    code, out, _ = run(capsys, *group, "--help")
    assert code == 0
    listed = out.split("Commands:\n")[1].split("\n\n")[0].splitlines()
    command = cli.cli if not group else cli.cli.commands[group[0]]
    assert len(listed) == len(command.commands)
    for line in listed:
        name, _, text = line.strip().partition(" ")
        assert (*group, name) in cli.SHORT_HELP and text.strip() == cli.SHORT_HELP[(*group, name)], line


@pytest.mark.parametrize("argv", list(_command_paths(cli.cli)), ids=" ".join)
def test_help_has_a_summary_and_examples(capsys, argv) -> None:
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    summary = out.split("\n\n")[1].strip()
    assert summary and not summary.startswith(("Options:", "Examples")), out
    examples = re.search(r"\n  Examples[^:\n]*:\n(.*)", out, re.S)
    assert examples, out
    assert "netns-lab " + " ".join(argv) in examples[1], out


def test_topology_command_prints_loadable_default(capsys, tmp_path) -> None:
    from netns_lab.k8s.manifest import default_lab
    from netns_lab.topology import load_topology

    code, out, _ = run(capsys, "topology")
    assert code == 0
    f = tmp_path / "t.yaml"
    f.write_text(out)
    assert load_topology(f) == default_lab()


def test_topology_of_a_manifest_is_its_normalised_form(capsys, tmp_path) -> None:
    f = tmp_path / "web.yaml"
    f.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: nginx, ports: [{containerPort: 80}]}]\n")
    code, out, _ = run(capsys, "topology", "--manifest", str(f))
    assert code == 0
    pod = load_topology_text_of(out, tmp_path).pods[0]
    assert (pod.name, pod.node, pod.app, pod.namespace) == ("web", "node1", "testserver", "default")


def load_topology_text_of(text: str, tmp_path):
    from netns_lab.topology import load_topology

    f = tmp_path / "out.yaml"
    f.write_text(text)
    return load_topology(f)


@pytest.mark.parametrize("argv", [["status", "-n", "lab2"], ["down", "-n", "lab2"], ["exec", "-n", "lab2", "host1", "true"]])
def test_old_dash_n_lab_says_what_changed(capsys, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip().split(" (see:")[0].endswith("-n/--namespace is now the Kubernetes namespace, as in kubectl; name the lab with --name LAB or NETNS_LAB=LAB")
    assert len(err.strip().splitlines()) == 1


def test_lab_from_environment(capsys, monkeypatch) -> None:
    monkeypatch.setenv("NETNS_LAB", "envlab")
    code, _, err = run(capsys, "status")
    assert code == 1 and "no lab named 'envlab'" in err


def test_parse_access_line_reads_the_lessons_lines() -> None:
    e = members.parse_access_line('198.19.15.254 - - [05/Oct/2020 10:04:41] "GET /logout HTTP/1.1" 404 -\n')
    assert e == {
        "client": "198.19.15.254",
        "time": "05/Oct/2020 10:04:41",
        "request": "GET /logout HTTP/1.1",
        "status": 404,
        "size": "-",
        "method": "GET",
        "path": "/logout",
    }
    assert members.parse_access_line(" * customer (pod customer) serving on TCP 80") is None


def test_diags_all_ignores_the_environment_lab(capsys, monkeypatch, tmp_path) -> None:
    """-A means every lab also when $NETNS_LAB names one (kubectl's -A beside a current context)."""
    from netns_lab import diags as collector
    from netns_lab.commands import diags

    monkeypatch.setattr(diags, "require_root", lambda: None)
    monkeypatch.setattr(diags.lab_state, "list_labs", lambda: ["one", "two"])
    monkeypatch.setattr(collector, "collect", lambda labs, out: {"labs": labs, "files": [], "errors": []})
    monkeypatch.setenv("NETNS_LAB", "one")
    code, out, _ = run(capsys, "diags", "-A", "--out", str(tmp_path / "d"), "-o", "json")
    assert code == 0
    assert '"one",\n    "two"' in out
    code, _, err = run(capsys, "diags", "-A", "--name", "one", "--out", str(tmp_path / "e"))
    assert code == 2
    assert "give --name or -A, not both" in one_error_line(err)


def test_exec_of_a_missing_command_is_one_line(capsys, lab: str) -> None:
    code, _, err = run(capsys, "exec", "--name", lab, "host1", "--", "no-such-command-here", "-x")
    assert code == 1
    assert "no-such-command-here: command not found" in one_error_line(err)


def test_cache_ls_and_clear(capsys, monkeypatch, tmp_path) -> None:
    """`cache ls` lists the compile cache's entries (-o json too), `cache clear` empties it."""
    import json

    from ebpf_nodeport import bpfcache

    monkeypatch.setenv(bpfcache.ENV, str(tmp_path))
    (tmp_path / "0123abcd.json").write_text("{}")
    code, out, _ = run(capsys, "cache", "ls", "-o", "json")
    assert code == 0 and [e["key"] for e in json.loads(out)["entries"]] == ["0123abcd"]
    if os.geteuid() != 0:
        return
    code, out, _ = run(capsys, "cache", "clear")
    assert (code, out.strip()) == (0, f"removed 1 cached compile from {tmp_path}")
    assert not list(tmp_path.iterdir())
