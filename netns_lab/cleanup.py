"""Clean-up: remove a lab's processes, namespaces, node cgroups, pinned BPF objects and state, found by naming convention.

Works without the state file (a crash, a killed `up`): namespaces are found by their
`nl-<lab>-` prefix, processes by living in one of those namespaces or by carrying
`netns_lab.apps... --lab <lab>` on their command line, pins under /sys/fs/bpf/netns-lab/<lab>.
Interfaces, routes, iptables rules and TC programs live inside the namespaces and vanish with them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass, field

from netns_lab import cgroups, naming
from netns_lab import state as lab_state
from netns_lab.nsexec import list_netns, netns_inode, remove_netns

TERM_GRACE = 1.0
KILL_GRACE = 2.0


@dataclass
class Removed:
    """What a teardown removed, for the CLI's report."""

    lab: str
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    pins: bool = False
    cgroups: bool = False
    state: bool = False

    @property
    def anything(self) -> bool:
        """True if the lab had anything left to remove."""
        return bool(self.namespaces or self.pids or self.pins or self.cgroups or self.state)


def lab_namespaces(lab: str) -> list[str]:
    """Named namespaces belonging to `lab` (by prefix)."""
    return [n for n in list_netns() if (parts := naming.split_netns(n)) and parts[0] == lab]


def labs_present() -> list[str]:
    """Every lab with anything left on this machine: namespaces, state directory or BPF pins."""
    labs = {parts[0] for n in list_netns() if (parts := naming.split_netns(n))}
    labs.update(lab_state.list_labs())
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        labs.update(d.name for d in naming.BPF_ROOT.iterdir() if naming.LAB_RE.match(d.name))
    return sorted(labs)


def lab_exists(lab: str) -> bool:
    """True if anything of `lab` is present."""
    return bool(lab_namespaces(lab)) or naming.run_dir(lab).exists() or naming.bpf_dir(lab).exists()


def _cmdline(pid: int) -> list[str]:
    """A process's argv ([] if it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def is_lab_app(pid: int, lab: str) -> bool:
    """True if `pid` runs one of our app modules for this lab (`-m netns_lab.apps.X ... --lab <lab>`)."""
    argv = _cmdline(pid)
    is_app = any(a.startswith("netns_lab.apps.") for a in argv)
    return is_app and any(argv[i] == "--lab" and argv[i + 1] == lab for i in range(len(argv) - 1))


def _all_pids() -> list[int]:
    """Every process id in /proc."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def lab_app_pids(lab: str, app: str) -> list[int]:
    """The lab's live processes of one app (`-m <app> ... --lab LAB` on the command line)."""
    return [pid for pid in _all_pids() if app in _cmdline(pid) and is_lab_app(pid, lab) and _alive(pid)]


def lab_processes(lab: str, recorded: list[int] | tuple[int, ...] = ()) -> list[int]:
    """Processes of the lab: inside one of its namespaces, `recorded` in its state, or its app command lines."""
    ids = {i for n in lab_namespaces(lab) if (i := netns_inode(str(naming.netns_path(n))))}
    me = os.getpid()
    found: set[int] = set()
    for pid in _all_pids():
        if pid == me:
            continue
        if netns_inode(f"/proc/{pid}/ns/net") in ids or is_lab_app(pid, lab):
            found.add(pid)
    for pid in recorded:
        # a recorded pid may have been reused by an unrelated process: only take it if it is ours
        if isinstance(pid, int) and pid != me and is_lab_app(pid, lab):
            found.add(pid)
    return sorted(found)


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _reap(pids: list[int]) -> None:
    """Collect exited children of ours (apps started by this process in tests) so they leave no zombie."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def kill(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after a grace period; waits until all are gone."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, KILL_GRACE)):
        live = [p for p in pids if _alive(p)]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while live and time.monotonic() < deadline:
            _reap(live)
            live = [p for p in live if _alive(p)]
            if live:
                time.sleep(0.01)
        _reap(pids)
        if not live:
            return


def teardown(lab: str) -> Removed:
    """Remove everything of `lab`; safe on a half-built or already half-removed lab."""
    out = Removed(lab)
    out.pids = lab_processes(lab, lab_state.recorded_pids(lab))
    kill(out.pids)
    for name in lab_namespaces(lab):
        with contextlib.suppress(FileNotFoundError):
            remove_netns(name)
        out.namespaces.append(name)
    out.cgroups = cgroups.remove_lab(lab)  # after the kill: the node cgroups are empty by now
    pins = naming.bpf_dir(lab)
    if pins.exists():
        shutil.rmtree(pins)  # bpffs allows unlinking pins; programs/maps are freed with their last reference
        out.pins = True
    run = naming.run_dir(lab)
    if run.exists():
        shutil.rmtree(run, ignore_errors=True)
        out.state = True
    remove_empty_roots()  # the last lab leaves the machine as it found it, `--all` or not
    return out


def remove_sim_pins() -> bool:
    """Remove the BPF test harness' leftover pins (a test run killed before its teardown).

    They live outside any lab (ebpf_nodeport.testrun.SIM_PIN_ROOT), so only `down --all` sweeps them.
    """
    from ebpf_nodeport.testrun import SIM_PIN_ROOT

    if not os.path.isdir(SIM_PIN_ROOT):
        return False
    shutil.rmtree(SIM_PIN_ROOT, ignore_errors=True)
    return True


def remove_empty_roots() -> None:
    """Drop /run/netns-lab and /sys/fs/bpf/netns-lab when no lab uses them (rmdir: only if empty)."""
    for root in (naming.RUN_ROOT, naming.BPF_ROOT):
        with contextlib.suppress(OSError):
            root.rmdir()
