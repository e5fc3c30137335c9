"""Boot one VM with qemu and always tear it down: own process group, per-run overlay, timeouts."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

QEMU = "qemu-system-x86_64"
KVM_PROBE_SECONDS = 20


@dataclass
class VmSpec:
    """What to boot: kernel, initrd, disk (copy-on-write unless writable), shares and cmdline words."""

    vmlinuz: Path
    initrd: Path
    disk: Path
    src: Path  # shared read-only as tag "src"
    out: Path  # shared read-write as tag "out"
    args: list[str] = field(default_factory=list)  # extra kernel command line words
    accel: str = "tcg"
    cpus: int = 2
    mem_mib: int = 4096
    writable: bool = False  # provisioning writes the cached disk itself
    bpf_cache: Path | None = None  # shared read-write as tag "bpfcache": the guest's BPF compile cache


def cmdline(spec: VmSpec) -> str:
    """The guest kernel command line: serial console, virtio root, the image's init, our args."""
    words = ["console=ttyS0", "root=/dev/vda", "rw", "init=/usr/local/sbin/netns-lab-vm-init",
             "panic=-1", "net.ifnames=0", *spec.args]
    return " ".join(words)


def qemu_argv(spec: VmSpec, disk: Path, disk_format: str) -> list[str]:
    """The qemu command line for spec, booting from disk (an overlay or the image itself)."""
    accel = "kvm" if spec.accel == "kvm" else "tcg,thread=multi"
    shares = [] if spec.bpf_cache is None else [
        "-virtfs", f"local,path={spec.bpf_cache},mount_tag=bpfcache,security_model=none"]
    return [
        QEMU, "-machine", "q35", "-accel", accel, "-cpu", "host" if spec.accel == "kvm" else "max",
        "-smp", str(spec.cpus), "-m", str(spec.mem_mib),
        "-kernel", str(spec.vmlinuz), "-initrd", str(spec.initrd), "-append", cmdline(spec),
        "-drive", f"file={disk},if=virtio,format={disk_format},cache=unsafe",
        "-virtfs", f"local,path={spec.src},mount_tag=src,security_model=none,readonly=on",
        "-virtfs", f"local,path={spec.out},mount_tag=out,security_model=none", *shares,
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
    ]


def _die_with_parent() -> None:
    """preexec: the kernel SIGKILLs qemu when the thread that started it dies, even by SIGKILL
    (no finally-block runs then); its own session keeps terminal signals off it."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM qemu's process group, SIGKILL it if still there after 5 s, and reap it."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Interrupted(Exception):
    """SIGTERM/SIGHUP: raised in the main thread so it unwinds like Ctrl-C and tears VMs down."""


def raise_interrupt(signum, frame):  # noqa: ARG001
    """Signal handler the runner installs (main thread) for SIGTERM and SIGHUP."""
    raise Interrupted(signal.Signals(signum).name)


# Every qemu this process started and has not reaped: what kill_all() stops on an interrupt,
# whichever thread started it.
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def kill_all() -> None:
    """Stop every VM still running (process groups); their boot() calls then clean up."""
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        _kill_group(proc)


def boot(spec: VmSpec, console: TextIO, timeout_s: float,
         on_line: Callable[[str], None] = lambda line: None,
         stop_when: Callable[[str], bool] = lambda line: False) -> int | None:
    """Run the VM to its power-off; console lines go to `console` and on_line.

    Returns qemu's exit status, or None when it was stopped (timeout or stop_when matched).
    The VM is killed (process group) and its overlay removed on every path; an interrupt
    in the main thread reaches VMs of other threads through kill_all().
    """
    with tempfile.TemporaryDirectory(prefix="netns-lab-vm-") as tmp:
        if spec.writable:
            disk, fmt = spec.disk, "raw"
        else:
            disk, fmt = Path(tmp) / "overlay.qcow2", "qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(spec.disk), "-F", "raw",
                            str(disk)], check=True)
        proc = subprocess.Popen(qemu_argv(spec, disk, fmt), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        with _running_lock:
            _running.add(proc)
        try:
            return _pump(proc, console, time.monotonic() + timeout_s, on_line, stop_when)
        finally:
            _kill_group(proc)
            with _running_lock:
                _running.discard(proc)


def _pump(proc: subprocess.Popen, console: TextIO, deadline: float,
          on_line: Callable[[str], None], stop_when: Callable[[str], bool]) -> int | None:
    """Copy qemu's serial output until it exits, the deadline passes or stop_when matches."""
    import selectors

    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            console.write("\n[netns-lab vm: timeout, killing the VM]\n")
            return None
        if not sel.select(timeout=min(left, 1.0)):
            if proc.poll() is not None:
                return proc.returncode
            continue
        chunk = proc.stdout.read()
        if not chunk:
            if proc.poll() is not None or chunk == b"":
                proc.wait()
                return proc.returncode
            continue
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            console.write(line + "\n")
            on_line(line)
            if stop_when(line):
                console.flush()
                return None
        console.flush()


def kvm_backend(modules: Path = Path("/sys/module")) -> str:
    """Which KVM backend provides /dev/kvm: "hardware" (kvm_intel/kvm_amd), "pvm" or "none".

    PVM (kvm_pvm, pagetable-based virtualization) gives /dev/kvm on hosts without VT-x/AMD-V,
    but it runs only guest kernels built as PVM guests (CONFIG_PVM_GUEST, a PIE kernel booted
    as an ELF vmlinux); Debian's stock kernels stop after "Probing EDD" under it.
    """
    if (modules / "kvm_intel").exists() or (modules / "kvm_amd").exists():
        return "hardware"
    return "pvm" if (modules / "kvm_pvm").exists() else "none"


def kvm_usable(vmlinuz: Path) -> tuple[bool, str]:
    """Boot the kernel under KVM for a few seconds: does it print its banner? (why, if not)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm missing or not accessible"
    if kvm_backend() == "pvm":
        return False, ("/dev/kvm is PVM (kvm_pvm module, no VT-x/AMD-V): it boots only PVM guest "
                       "kernels, not Debian's")
    argv = [QEMU, "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "512",
            "-kernel", str(vmlinuz), "-append", "console=ttyS0 panic=-1", "-display", "none",
            "-serial", "stdio", "-monitor", "none", "-no-reboot"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen: list[str] = []
    try:
        with open(os.devnull, "w") as sink:
            _pump(proc, sink, time.monotonic() + KVM_PROBE_SECONDS, seen.append,
                  lambda line: "Linux version" in line)
    finally:
        _kill_group(proc)
    if any("Linux version" in line for line in seen):
        return True, "KVM boots the kernel"
    last = seen[-1] if seen else "no output"
    return False, f"no kernel banner under KVM within {KVM_PROBE_SECONDS} s (last output: {last!r})"
