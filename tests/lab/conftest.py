"""Fixtures for whole-lab tests: labs under unique names, always torn down, plus a private sandbox for `down --all`.

Labs are brought up and removed by the project's pytest plugin (netns_lab/pytest_plugin.py,
the lab API underneath); the tests then drive them through the real CLI in a subprocess
(`python -m netns_lab ...`), so they see exactly what a user sees: exit codes, output, state on disk.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netns_lab import naming
from netns_lab import state as lab_state
from netns_lab.lab import Lab as ApiLab
from netns_lab.pytest_plugin import running_lab as api_lab
from netns_lab.pytest_plugin import unique_name

CLI = [sys.executable, "-m", "netns_lab"]


def unique_lab(tag: str = "") -> str:
    """A lab name nobody else uses: `t1` + tag + random hex, at most 12 characters."""
    return unique_name("t1", tag)


def cli(*args: str, check: bool = True, timeout: float = 120, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run netns-lab; with check, fail the test (showing its output) on a non-zero exit."""
    proc = subprocess.run([*(prefix or []), *CLI, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"netns-lab {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@dataclass
class Lab:
    """A lab brought up for a test, with helpers that go through the CLI."""

    name: str

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """`netns-lab <command> --name <lab> <args>`."""
        return cli(args[0], "--name", self.name, *args[1:], check=check, timeout=timeout)

    def exec(self, member: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside a member's namespace."""
        return self.run("exec", member, "--", *cmd, check=check, timeout=timeout)

    def curl(self, url: str, member: str = "host1") -> str:
        """GET a URL from a member (host1 by default); the body."""
        return self.exec(member, "curl", "-sS", "--fail", "--max-time", "10", url).stdout

    def pod(self, role: str) -> str:
        """A pod's current name from its role in the lesson: `customer`, `database`, `summary-1`/`summary-2`
        (the summary pods by address: summary-1 is node1's). A Deployment's pods are named
        `<deployment>-<hash>-<5 chars>` and a replacement gets a new name, so tests name roles."""
        st = lab_state.load(self.name)
        if role in st.pods:
            return role
        app, _, index = role.partition("-")
        pods = sorted((p.name for p in st.spec().pods if p.all_labels()["app"] == app),
                      key=lambda name: tuple(int(x) for x in st.pods[name].ip.split(".")))
        return pods[int(index or 1) - 1]

    def role(self, pod: str) -> str:
        """The role (see pod()) of a pod name."""
        app = lab_state.load(self.name).spec().pod(pod).all_labels()["app"]
        return app if app != "summary" else next(r for r in ("summary-1", "summary-2") if self.pod(r) == pod)

    def pod_ip(self, pod: str) -> str:
        """A pod's current address (by name or role), from `status`."""
        name = self.pod(pod)
        return next(p["ip"] for p in self.status()["pods"] if p["name"] == name)

    def node_address(self, node: str) -> str:
        """A member's fabric address, from the lab's state."""
        return str(lab_state.load(self.name).members[node].address)

    def status(self) -> dict:
        """`status -o json`."""
        return json.loads(self.run("status", "-o", "json").stdout)

    def log_entries(self, pod: str) -> list[dict]:
        """Parsed access-log entries of a pod (by name or role; `logs -o json`)."""
        return json.loads(self.run("logs", self.pod(pod), "-o", "json").stdout)

    def netns(self, member: str) -> str:
        """Namespace name of a member (a pod by name or role)."""
        if member not in lab_state.load(self.name).members and member != naming.FABRIC:
            member = self.pod(member)
        return naming.netns(self.name, member)

    def api(self) -> ApiLab:
        """The same lab through the lab API (state, datapath handles)."""
        return ApiLab(self.name)


def counter(lab: Lab, node: str, hook: str, reason: str) -> int:
    """A datapath counter of one node, read from its pinned maps."""
    with lab.api().datapath(node).maps() as m:
        return m.counter(hook, reason)


def host_python(lab: Lab, script: str, *args: str, timeout: float = 300) -> str:
    """Run a Python snippet (with sys.argv[1:] = args) inside host1's namespace; its stdout."""
    proc = subprocess.run(["ip", "netns", "exec", lab.netns("host1"), sys.executable, "-c", script, *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


COLLIDE_SCRIPT = r"""
import json, socket, sys
first, second, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def sock():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # two sockets, one client port
    s.bind(("0.0.0.0", port))
    s.settimeout(5)
    return s
def get(s):
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: yaobank\r\n\r\n")
        data = b""
        while b"</html>" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return "ok" if b"2389.45 USD" in data else "bad page"
    except OSError as exc:
        return repr(exc)
a = sock(); a.connect((first, 30180))
b = sock(); b.connect((second, 30180))
print(json.dumps([get(a), get(b), get(a), get(b)]))
"""


def same_port_twice(lab: Lab, first: str, second: str, port: int) -> list[str]:
    """From host1, two live keep-alive connections from one client port to the customer NodePort
    on two node addresses, two requests on each, interleaved: what each request got."""
    return json.loads(host_python(lab, COLLIDE_SCRIPT, first, second, str(port), timeout=60))


def lab_namespaces(lab: str, netns_dir: Path = naming.NETNS_DIR) -> list[str]:
    """Namespaces of `lab` present under a /run/netns directory."""
    try:
        return sorted(n for n in os.listdir(netns_dir) if n.startswith(naming.ns_prefix(lab)))
    except FileNotFoundError:
        return []


def ns_inodes(paths: list[Path]) -> set[tuple[int, int]]:
    """(dev, inode) of namespace files."""
    out = set()
    for p in paths:
        st = os.stat(p)
        out.add((st.st_dev, st.st_ino))
    return out


def processes_in(inodes: set[tuple[int, int]]) -> list[int]:
    """Pids of processes whose network namespace is one of `inodes`."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{d}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            pids.append(int(d))
    return pids


def processes_with_lab_arg(lab: str) -> list[int]:
    """Pids whose command line carries `--lab <lab>` (our app servers)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv[i] == b"--lab" and argv[i + 1] == lab.encode() for i in range(len(argv) - 1)) and alive(int(d)):
            pids.append(int(d))
    return pids


def root_snapshot() -> dict[str, str]:
    """The root namespace's links, routes and iptables rules (counters stripped), to prove labs never touch it."""

    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    links = "\n".join(sorted(re.sub(r"^\d+: ", "", line.split("\\")[0]) for line in sh("ip", "-o", "link", "show").splitlines()))
    rules = re.sub(r"\[\d+:\d+\]", "", sh("iptables-save"))
    rules = "\n".join(line for line in rules.splitlines() if not line.startswith("#"))
    # Router-advertised routes count their lifetime down ("expires 86355sec"): not a change.
    routes = re.sub(r" expires \d+sec", "", sh("ip", "route", "show", "table", "all"))
    return {"links": links, "routes": routes, "iptables": rules}


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a zombie holds no namespace; its parent reaps it later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_lab_gone(lab: str, inodes: set[tuple[int, int]], pids: list[int]) -> None:
    """Nothing of `lab` is left: namespaces, processes (by pid, netns or command line), pins, state."""
    assert lab_namespaces(lab) == []
    assert processes_in(inodes) == []
    assert [p for p in pids if alive(p)] == []
    assert processes_with_lab_arg(lab) == []
    assert not naming.bpf_dir(lab).exists()
    assert not naming.run_dir(lab).exists()


@pytest.fixture
def lab_factory(netns_lab: Callable[..., ApiLab]) -> Callable[..., Lab]:
    """Bring labs up under unique names (the plugin's `netns_lab`); every one is taken down at the end, even when the test fails."""

    def make(mode: str | None = None, topology: Path | None = None, tag: str = "") -> Lab:
        return Lab(netns_lab(mode, topology, name=unique_lab(tag)).name)

    return make


@contextlib.contextmanager
def running_lab(tag: str, mode: str | None = None, manifests: list[Path] | None = None) -> Iterator[Lab]:
    """A lab (default, or these Kubernetes manifests on the lesson's nodes) up under a unique name for the block;
    always taken down, also when `up` or the block fails."""
    with api_lab(unique_lab(tag), mode, manifests=manifests) as lab:
        yield Lab(lab.name)


@contextlib.contextmanager
def cli_lab(tag: str, *up_args: str) -> Iterator[Lab]:
    """A lab brought up by the `up` command itself (`netns-lab up --name <unique> <up_args>`); always taken down."""
    lab = Lab(unique_lab(tag))
    try:
        cli("up", "--name", lab.name, *up_args, timeout=600)
        yield lab
    finally:
        if lab.api().exists():
            lab.api().down()


@pytest.fixture(scope="module")
def yaobank() -> Iterator[Lab]:
    """One default kube-proxy lab shared by a module's read-only tests."""
    with running_lab("m", "kube-proxy") as lab:
        yield lab


@dataclass
class Sandbox:
    """A private mount namespace with its own /run and bpffs.

    `down --all` removes every lab it can find; run inside the sandbox it can only find the
    labs made there, so the test never touches other people's labs on a shared machine.
    """

    holder: subprocess.Popen
    labs: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside the sandbox."""
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"]

    def path(self, p: Path | str) -> Path:
        """A sandbox path as seen from outside (through the holder's root)."""
        return Path(f"/proc/{self.holder.pid}/root") / str(p).lstrip("/")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """netns-lab inside the sandbox."""
        return cli(*args, check=check, prefix=self.prefix)

    def popen_cli(self, *args: str) -> subprocess.Popen:
        """Start netns-lab inside the sandbox without waiting (nsenter execs it: the pid is netns-lab's)."""
        return subprocess.Popen([*self.prefix, *CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        """Any command inside the sandbox (must succeed)."""
        return subprocess.run([*self.prefix, *cmd], capture_output=True, text=True, check=True)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A sandbox for `down --all`; whatever the test leaves in it is removed afterwards."""
    script = "mount -t tmpfs none /run && mount -t bpf bpf /sys/fs/bpf && echo ready && exec sleep infinity"
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "ready"
    box = Sandbox(holder)
    try:
        yield box
    finally:
        box.cli("down", "--all", check=False)
        for lab in box.labs:  # belt and braces: nothing of ours may outlive the test
            for pid in processes_with_lab_arg(lab):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        holder.kill()
        holder.wait()


@functools.lru_cache(maxsize=None)
def time_scale() -> float:
    """How much slower than this project's CI machine the CLI runs here (1.0 or more): one `--help`
    takes ~0.5 s there and several seconds in a TCG VM. Tests whose scenario must outlast a few CLI
    calls (a grace period, a client's run) stretch those periods by it; what they assert stays."""
    t0 = time.monotonic()
    subprocess.run([*CLI, "--help"], capture_output=True, check=True)
    return max(1.0, (time.monotonic() - t0) / 0.6)


def wait_for(predicate: Callable[[], bool], timeout: float = 20, interval: float = 0.002) -> bool:
    """Poll `predicate` until true (True) or timeout (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
