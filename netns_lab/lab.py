"""The lab API: `Lab` brings a lab up and down, switches its dataplane, recreates pods and runs commands in it.

What the commands, `bench`, the lesson and the pytest plugin all drive, in the manner of
Mininet's `Mininet` object under its CLI:

    lab = Lab("demo")
    lab.up(mode="tunnel")                     # examples/yaobank.yaml; or topology=manifest.load([...], ...).topology
    lab.apply(manifest.apply(docs, lab.topology()).topology)   # a changed topology, live (kubectl apply)
    lab.run("host1", "curl", "-s", "198.19.0.1:30180").stdout
    lab.switch_mode("dsr")                    # = patch_felix('{"spec": {"bpfExternalServiceMode": "DSR"}}')
    lab.down()

Every change takes the lab's lock; every user-caused failure is a LabError with one line.
Progress lines go to the `progress` callback (plain text), nothing is printed here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns_lab import cgroups, cleanup, naming
from netns_lab import felix as felix_model
from netns_lab import state as lab_state
from netns_lab.errors import LabError
from netns_lab.felix import FelixConfig, FelixConfigError
from netns_lab.nsexec import list_netns
from netns_lab.state import EBPF_MODES, LabState
from netns_lab.topology import Topology, Workload, plan, topology_to_dict

PROG = "netns-lab"
Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    """Progress sink that drops messages."""


def check_ebpf_prereqs(mode: str) -> None:
    """LabError unless BCC and kernel headers are available for an eBPF mode."""
    if importlib.util.find_spec("bcc") is None:
        raise LabError(f"mode {mode!r} needs BCC's python module: install python3-bpfcc (./setup.sh does)")
    build = Path("/lib/modules") / os.uname().release / "build"
    if not build.exists():
        raise LabError(f"mode {mode!r} needs kernel headers: {build} is missing (./setup.sh links Debian's 6.1 headers)")


def pid_running(pid: int | None) -> bool:
    """True if `pid` is a live (non-zombie) process."""
    if not isinstance(pid, int):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class UpResult:
    """What up() did: built the lab (seconds) or found it already up as asked."""

    mode: str
    already: bool
    seconds: float = 0.0


def list_labs() -> list[dict[str, Any]]:
    """The labs present on this machine (also half-built ones): name, status, mode, namespaces."""
    rows = []
    for name in cleanup.labs_present():
        try:
            st = lab_state.load(name)
        except LabError:
            st = None
        rows.append({"lab": name, "status": st.status if st else "no state", "mode": st.mode if st else None,
                     "namespaces": len(cleanup.lab_namespaces(name))})
    return rows


class Lab:
    """One lab, by name; cheap to make (all state is on disk), so make one wherever needed."""

    def __init__(self, name: str = naming.DEFAULT_LAB, progress: Progress = _quiet, failure: Progress = _quiet):
        self.name = naming.check_lab_name(name)
        self.progress = progress  # one line per step done
        self.failure = failure  # one line when a step fails and what was built is removed

    def __repr__(self) -> str:
        return f"Lab({self.name!r})"

    # -- reading

    def exists(self) -> bool:
        """True if anything of the lab is present (namespaces, state, pins)."""
        return cleanup.lab_exists(self.name)

    def state(self) -> LabState:
        """The lab's state, or LabError naming the labs that do exist."""
        st = lab_state.load(self.name)
        if st is None:
            present = cleanup.labs_present()
            hint = f" (labs present: {', '.join(present)})" if present else " (no lab is up; start one with: netns-lab up)"
            raise LabError(f"no lab named {self.name!r}{hint}")
        return st

    def ready_state(self) -> LabState:
        """The state of a lab that is fully up; LabError otherwise."""
        st = self.state()
        if st.status != "ready":
            raise LabError(f"lab {self.name!r} is not ready (status {st.status}); clean up first: {PROG} down --name {self.name}")
        return st

    @property
    def mode(self) -> str:
        """kube-proxy, kube-proxy-nft, tunnel or dsr."""
        return self.state().mode

    def netns(self, member: str) -> str:
        """The namespace of a member (node, host, pod or fabric); LabError for an unknown one."""
        names = self.state().namespaces()
        if member not in names:
            raise LabError(f"unknown member {member!r} of lab {self.name!r} (members: {', '.join(sorted(names))})")
        return names[member]

    def datapath(self, node: str, keep_state: bool = False) -> Any:
        """The eBPF datapath handle (ebpf_nodeport.datapath.NodeDatapath) of one node."""
        from netns_lab import dataplane

        return dataplane.datapath(self.state(), node, keep_state)

    def status(self) -> dict[str, Any]:
        """What `status -o json` shows: the state plus live checks (namespace present, app running, dataplane)."""
        return status_document(self.state())

    # -- members

    def exec_argv(self, member: str, *argv: str) -> list[str]:
        """The command line that runs `argv` in a member's namespace; LabError if the namespace is gone."""
        ns = self.netns(member)
        if ns not in list_netns():
            raise LabError(f"namespace {ns} of {member!r} is missing; the lab is broken: {PROG} down --name {self.name}")
        return ["ip", "netns", "exec", ns, *argv]

    def join_cgroup(self, member: str) -> bool:
        """Move this process into a node's cgroup, where its connect-time LB programs act (what `exec NODE`
        does before exec); False for a member that is no node, or a node without one (kube-proxy mode)."""
        st = self.state()
        if member not in st.nodes():
            return False
        return cgroups.join(self.name, member)

    def run(self, member: str, *argv: str, check: bool = False, timeout: float | None = 60) -> subprocess.CompletedProcess:
        """Run `argv` in a member's namespace and capture its output (text)."""
        return subprocess.run(self.exec_argv(member, *argv), capture_output=True, text=True, check=check, timeout=timeout)

    # -- life cycle

    def up(self, mode: str | None = None, topology: Topology | None = None) -> UpResult:
        """Build the lab (default topology, kube-proxy mode) and start its apps; idempotent for a lab already up as asked.

        On any failure (or SIGTERM/Ctrl-C) what was built is removed again.
        """
        from netns_lab.k8s import manifest

        topo = topology or manifest.default_lab()
        addr_plan = plan(topo)
        want = mode or "kube-proxy"
        if want in EBPF_MODES:
            check_ebpf_prereqs(want)
        had_dir = naming.run_dir(self.name).exists()
        with lab_state.lock(self.name):
            try:
                current = _already_up(self.name, topology, mode)
            except LabError:
                if not had_dir:
                    shutil.rmtree(naming.run_dir(self.name), ignore_errors=True)  # only the lock directory we just made
                raise
            if current is not None:
                return UpResult(current, already=True)
            t0 = time.monotonic()
            _bring_up(LabState.new(self.name, topo, addr_plan, want), self.progress, self.failure)
            return UpResult(want, already=False, seconds=time.monotonic() - t0)

    def down(self) -> cleanup.Removed:
        """Remove the lab: processes, namespaces (with their veths and iptables), BPF pins, state; LabError if none."""
        if not self.exists():
            raise LabError(f"no lab named {self.name!r}")
        with lab_state.lock(self.name, timeout=30):
            return cleanup.teardown(self.name)

    # -- changes to a running lab

    def set_felix(self, change: Callable[[FelixConfig], FelixConfig], proxy_mode: str | None = None) -> Any:
        """Apply a FelixConfig change (and kube-proxy's mode, None: as it is) under the lab's lock; the lab moves to
        what they select, live (a dataplane.Change)."""
        from netns_lab import dataplane

        self.state()  # before the lock, which would create the lab's directory
        with lab_state.lock(self.name):
            st = self.ready_state()
            try:
                new = change(st.felix)
            except FelixConfigError as exc:
                raise LabError(str(exc)) from None
            if new.mode in EBPF_MODES:
                check_ebpf_prereqs(new.mode)
            ch = dataplane.apply(st, new, self.progress, proxy_mode)
            lab_state.save(self.name, st)
        return ch

    def patch_felix(self, patch_text: str) -> Any:
        """`calicoctl patch felixconfiguration default -p PATCH`; refused (nothing changed) when the patch is bad."""
        try:
            felix_model.apply_patch(FelixConfig(), patch_text)
        except FelixConfigError as exc:
            raise LabError(str(exc)) from None
        return self.set_felix(lambda cfg: felix_model.apply_patch(cfg, patch_text))

    def patch_service(self, name: str, namespace: str, patch_text: str) -> list[str]:
        """`kubectl patch service NAME -n NS -p PATCH` (JSON merge patch), live; kubectl's line. Nothing is
        touched when the patch is bad or the result is not a valid service."""
        from netns_lab.k8s import patch as k8s_patch
        from netns_lab.k8s import views

        doc = k8s_patch.parse(patch_text)
        lines: list[str] = []

        def change(st: LabState, topo: Topology) -> Topology:
            st.check_namespace(namespace)
            result = k8s_patch.patch_service(topo, name, namespace, doc, views.View(st, pid_running).service)
            lines.extend(result.lines)
            return result.topology

        self.change(change)
        return lines

    def switch_mode(self, mode: str) -> Any:
        """Move to kube-proxy, kube-proxy-nft, tunnel or dsr (the short form of a felix patch, plus kube-proxy's mode)."""
        if mode not in lab_state.MODES:
            raise LabError(f"unknown mode {mode!r}; valid modes: {', '.join(lab_state.MODES)}")
        felix_mode, proxy_mode = lab_state.split_mode(mode)
        return self.set_felix(lambda cfg: felix_model.for_mode(cfg, felix_mode), proxy_mode)

    def topology(self) -> Topology:
        """The lab's topology as it is now (Kubernetes objects normalised; pods made live included)."""
        return self.state().spec()

    def change(self, change: Callable[[LabState, Topology], Topology]) -> list[str]:
        """Under the lab's lock: `change` maps the current state and topology to a new topology, and the running
        lab moves there live (k8s/live.py: endpoints withdrawn, pods removed, new pods started, endpoints added);
        one line per pod made or removed. Nothing is touched when `change` raises."""
        from netns_lab.k8s import live

        self.state()  # before the lock, which would create the lab's directory
        with lab_state.lock(self.name):
            st = self.ready_state()
            new = change(st, st.spec())
            try:
                return live.reconcile(st, new, self.progress)
            finally:
                lab_state.save(self.name, st)

    def apply(self, topology: Topology) -> list[str]:
        """Move the running lab to `topology` (what `apply -f` and `delete -f` computed), live."""
        return self.change(lambda st, topo: topology)

    def scale(self, kind: str, name: str, replicas: int, namespace: str | None = None) -> Workload:
        """`kubectl scale KIND/NAME --replicas N` (kind Deployment or ReplicaSet): pods added or removed live."""
        from netns_lab.k8s import manifest

        found: list[Workload] = []

        def change(st: LabState, topo: Topology) -> Topology:
            st.check_namespace(namespace)
            found[:] = [w for w in topo.workloads if w.kind == kind and w.name == name
                        and (namespace is None or w.namespace == namespace)]
            if not found:
                where = f" in namespace {namespace!r}" if namespace else ""
                raise LabError(f'{kind.lower()} "{name}" not found{where}')
            manifest.scale(topo, found[0], replicas)
            return topo

        self.change(change)
        return found[0]

    def delete_pods(self, names: tuple[str, ...] | list[str] = (), selector: str | None = None,
                    namespace: str | None = None, grace: int | None = None) -> Iterator[Any]:
        """`kubectl delete pod`: a ReplicaSet's pod is replaced by a new one (new name and address), a bare pod
        recreated under its name with a new address; its services follow. With `grace` seconds (> 0) the pod
        is marked terminating instead and goes when they have passed (netns_lab/graceful.py); a pod already
        terminating deleted without grace goes at once. Yields a dataplane.PodChange per pod as it is done
        (the lock is held until the iteration ends)."""
        from netns_lab import dataplane, graceful
        from netns_lab.k8s import live, manifest

        self.state()  # before the lock, which would create the lab's directory
        with lab_state.lock(self.name):
            st = self.ready_state()
            for name in st.select_pods(tuple(names), selector, namespace):
                t0 = time.monotonic()
                old = st.pods[name]
                topo = st.spec()
                try:
                    if grace:
                        ch = graceful.terminate(st, name, grace, self.progress)
                        graceful.ensure_reaper(self.name)
                    elif topo.pod(name).terminating:
                        ch = graceful.finish(st, name, self.progress)
                    elif (new := manifest.replace_pod(topo, name)) is None:
                        ch = dataplane.delete_pod(st, name, self.progress)
                    else:
                        live.reconcile(st, topo, self.progress)
                        rec = st.pods[new.name]
                        ch = dataplane.PodChange(name, rec.node, old.ip, rec.ip, rec.pid or 0,
                                                 time.monotonic() - t0, new.name)
                finally:
                    lab_state.save(self.name, st)
                yield ch

    def finish_terminating(self) -> tuple[list[Any], float | None]:
        """What the lab's grace reaper does: under the lock, the terminating pods whose deadline has passed go
        (graceful.finish). Returns their PodChanges and the next deadline (None: no pod is terminating any
        more, and the reaper's pid file is removed, so the next graceful delete starts a new reaper)."""
        from netns_lab import graceful

        peek = lab_state.load(self.name)  # without the lock (saves are atomic renames): is anything due yet?
        if peek is None:
            return [], None
        due = graceful.deadlines(peek)
        if due and min(due.values()) > time.time():
            return [], min(due.values())
        done = []
        with lab_state.lock(self.name):
            st = lab_state.load(self.name)
            if st is None or st.status != "ready":
                return [], None
            try:
                for name in graceful.expired(st):
                    done.append(graceful.finish(st, name, self.progress))
            finally:
                if done:
                    lab_state.save(self.name, st)
            left = graceful.deadlines(st)
            if not left:
                graceful.forget_reaper(self.name)
            return done, min(left.values()) if left else None


def _already_up(lab: str, topo: Topology | None, mode: str | None) -> str | None:
    """The lab's mode if it is already up as asked, None if there is none; LabError if it exists differently or half-built."""
    st = lab_state.load(lab)
    leftovers = cleanup.lab_namespaces(lab) or naming.bpf_dir(lab).exists()
    if st is None:
        if leftovers:
            raise LabError(f"lab {lab!r} has leftovers of an interrupted run; clean up first: {PROG} down --name {lab}")
        return None
    expected = {naming.netns(lab, naming.FABRIC)} | {m.netns for m in st.members.values()}
    if st.status != "ready" or not expected <= set(list_netns()):
        raise LabError(f"lab {lab!r} is half-built (an `up` was interrupted); clean up first: {PROG} down --name {lab}")
    if mode is not None and mode != st.mode:
        raise LabError(f"lab {lab!r} is already up in mode {st.mode}; switch live with `{PROG} mode {mode}` or `down` it first")
    if topo is not None and topology_to_dict(topo) != st.topology:
        raise LabError(f"lab {lab!r} is already up with a different topology; `{PROG} down --name {lab}` it first")
    return st.mode


def _bring_up(st: LabState, progress: Progress, failure: Progress) -> None:
    """Build, program services, start apps, wait for them; on any failure remove what was made."""
    from netns_lab import builder, dataplane, healthcheck
    from netns_lab.apps import launch

    lab = st.lab
    lab_state.save(lab, st)
    me = os.getpid()
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_term(signum: int, frame: Any) -> None:
        if os.getpid() != me:  # a forked helper of some library: never run our roll-back twice
            os._exit(1)
        raise KeyboardInterrupt  # SIGTERM during `up`: roll back like Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    try:
        topo, addr_plan = st.plan()
        for pod, ifname in builder.build(lab, topo, addr_plan, progress).items():
            st.pods[pod].host_ifname = ifname
        lab_state.save(lab, st)

        t = time.monotonic()
        if st.mode in lab_state.KUBE_PROXY_MODES:
            dataplane.kube_proxy_install(st)
            progress(f"kube-proxy {st.kubeproxy.mode} rules on {len(topo.nodes)} nodes ({time.monotonic() - t:.2f}s)")
        else:
            dataplane.apply(st, st.felix, progress)
            progress(f"eBPF dataplane, mode {st.mode} ({time.monotonic() - t:.2f}s)")
        lab_state.save(lab, st)

        t = time.monotonic()
        started = launch.start_all(lab, topo, topo.pods)
        for s in started:
            st.pods[s.pod].pid = s.pid
        lab_state.save(lab, st)
        launch.wait_ready(lab, topo, addr_plan, started)
        progress(f"{len(started)} apps answering ({time.monotonic() - t:.2f}s)")

        healthcheck.sync(st)
        st.status = "ready"
        lab_state.save(lab, st)
    except BaseException as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the clean-up even if signalled again
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        failure(f"{str(exc) or type(exc).__name__}; removing what was built")
        cleanup.teardown(lab)
        raise
    finally:
        for sig, handler in old.items():  # an API caller (bench, a test) goes on with its own handlers
            signal.signal(sig, handler)


def status_document(st: LabState) -> dict[str, Any]:
    """What `status -o json` shows: the state plus live checks (namespace present, app running, dataplane)."""
    from netns_lab import dataplane

    present = set(list_netns())
    return {
        "lab": st.lab,
        "status": st.status,
        "mode": st.mode,
        "felix": st.felix.to_spec(),
        "nodes": [{"name": k, "address": m.address, "pod_block": m.pod_block, "netns": m.netns,
                   "present": m.netns in present} for k, m in st.nodes().items()],
        "hosts": [{"name": k, "address": m.address, "netns": m.netns, "present": m.netns in present}
                  for k, m in st.hosts().items()],
        "pods": [{"name": k, "node": p.node, "app": p.app, "ip": p.ip, "host_ifname": p.host_ifname, "pid": p.pid,
                  "running": pid_running(p.pid)} for k, p in st.pods.items()],
        "services": st.to_dict()["services"],
        "kubeproxy": st.to_dict()["kubeproxy"],
        "dataplane": dataplane.status(st),
    }
