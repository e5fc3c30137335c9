"""`./setup.sh vm-test [KERNEL...]`: build/cached images, one VM per kernel, a matrix summary.

  python3 -m netns_lab.vm [KERNEL...] [--out DIR] [--cache DIR] [--accel auto|kvm|tcg] [-- PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import image, matrix, progress, qemu, summary

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path("/var/cache/netns-lab/vm")
PROVISION_TIMEOUT_S = 40 * 60
RUN_TIMEOUT_S = 150 * 60


def say(msg: str) -> None:
    """Progress line in setup.sh's style."""
    print(f"==> vm-test: {msg}", flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    """Command line: kernels, options, and pytest arguments after `--`."""
    pytest_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="setup.sh vm-test", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kernels", nargs="*", metavar="KERNEL", help=f"of {', '.join(matrix.KERNELS)} (default: all)")
    p.add_argument("--out", type=Path, default=REPO / "vm-results", help="results per kernel (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="images (default: %(default)s)")
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    p.add_argument("--no-lesson", action="store_true", help="skip `netns-lab lesson` (quicker iterations)")
    p.add_argument("--no-bpf-cache", action="store_true",
                   help="start the guest's BPF compile cache empty (default: kept per kernel in the cache dir)")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="VMs at once (default: %(default)s; each takes 2 vCPUs and 4 GiB)")
    p.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S / 60, help="minutes per VM run (default: %(default)s)")
    ns = p.parse_args(argv)
    if ns.jobs < 1:
        p.error("--jobs must be at least 1")
    ns.pytest_args = pytest_args
    return ns


def choose_accel(wanted: str, vmlinuz: Path) -> str:
    """KVM when asked for or when a short probe boot shows it works; else TCG, saying why."""
    if wanted != "auto":
        return wanted
    ok, why = qemu.kvm_usable(vmlinuz)
    if ok:
        say(f"accelerator: KVM ({why})")
        return "kvm"
    say(f"accelerator: TCG, software emulation, slow ({why})")
    return "tcg"


def prepare(paths: image.Paths, kernels: list[matrix.Kernel], packages: list[str]) -> None:
    """Build (once) and provision (once) every kernel's image; cached images are reused."""
    t0 = time.monotonic()
    image.build_base(paths, packages, say)
    for k in kernels:
        image.build_disk(paths, k, say)
    say(f"images ready in {time.monotonic() - t0:.0f} s (cache {paths.cache}, key {paths.key})")


def provision(paths: image.Paths, k: matrix.Kernel, accel: str) -> None:
    """Boot the image writable once and run ./setup.sh install inside (venv, pip): kept in the image."""
    if paths.provisioned(k).exists():
        return
    out = paths.cache / f"provision-{k.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    say(f"kernel {k.name}: provisioning the image (setup.sh install inside the VM; log {out})")
    t0 = time.monotonic()
    spec = qemu.VmSpec(paths.vmlinuz(k), paths.initrd(k), paths.disk(k), REPO, out,
                       args=["netns_lab.mode=provision"], accel=accel, writable=True)
    with open(out / "console.log", "w") as console:
        qemu.boot(spec, console, PROVISION_TIMEOUT_S, on_line=_echo(k))
    status = summary.read_status(out / "status.env")
    if status.get("setup_rc") != "0":
        raise RuntimeError(f"provisioning kernel {k.name} failed (setup_rc={status.get('setup_rc')}); "
                           f"see {out}/setup.log and console.log")
    paths.provisioned(k).write_text(f"{time.monotonic() - t0:.0f}\n")
    say(f"kernel {k.name}: provisioned in {time.monotonic() - t0:.0f} s")


def _echo(k: matrix.Kernel):
    """Console filter: show the guest's progress lines (==>) prefixed with the kernel."""
    def on_line(line: str) -> None:
        if line.startswith("==>") or "Kernel panic" in line:
            print(f"[{k.name}] {line}", flush=True)
    return on_line


def run_kernel(paths: image.Paths, k: matrix.Kernel, accel: str, out_root: Path,
               pytest_args: list[str], timeout_s: float, lesson: bool = True,
               bpf_cache_on: bool = True) -> summary.Result:
    """One test VM for k: suite + lesson inside, results under out_root/<kernel>."""
    out = out_root / k.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["netns_lab.mode=test"] + ([] if lesson else ["netns_lab.lesson=0"])
    words = matrix.pytest_argv(pytest_args, lambda p: (REPO / p).exists())
    args.append("netns_lab.pytest=" + base64.b64encode(json.dumps(words).encode()).decode())
    bpf_cache = None
    if bpf_cache_on:
        bpf_cache = paths.cache / f"bpf-{k.name}"   # kept between runs: the next run compiles less
        bpf_cache.mkdir(exist_ok=True)
    spec = qemu.VmSpec(paths.vmlinuz(k), paths.initrd(k), paths.disk(k), REPO, out, args=args, accel=accel,
                       bpf_cache=bpf_cache)
    say(f"kernel {k.name}: booting ({accel}, {spec.cpus} vCPUs, {spec.mem_mib} MiB); console: {out}/console.log")
    t0 = time.monotonic()
    _, stop = progress.ticker(out / "pytest.log", lambda text: say(f"kernel {k.name}: {text}"), t0, time.monotonic)
    try:
        with open(out / "console.log", "w") as console:
            rc = qemu.boot(spec, console, timeout_s, on_line=_echo(k))
    finally:
        stop.set()
    seconds = time.monotonic() - t0
    note = "" if rc is not None else f"timed out after {timeout_s / 60:.0f} min"
    result = summary.load(k.name, out, seconds, note)
    if (out / "junit.xml").exists():
        shutil.copyfile(out / "junit.xml", out_root / f"junit-{k.name}.xml")
    say(f"kernel {k.name}: {'PASS' if result.ok else 'FAIL'} in {seconds:.0f} s")
    return result


def main(argv: list[str]) -> int:
    ns = parse(argv)
    try:
        kernels = matrix.select_kernels(ns.kernels)
    except ValueError as e:
        print(f"setup.sh vm-test: error: {e}", file=sys.stderr)
        return 2
    packages = matrix.setup_packages((REPO / "setup.sh").read_text())
    paths = image.Paths(ns.cache, matrix.image_key(packages))
    ns.cache.mkdir(parents=True, exist_ok=True)
    ns.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: list[summary.Result] = []
    old_handlers = {s: signal.signal(s, qemu.raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    with open(ns.cache / "lock", "w") as lock, ThreadPoolExecutor(max_workers=ns.jobs) as pool:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one vm-test at a time per cache: builds and VMs are heavy
            prepare(paths, kernels, packages)
            accel = choose_accel(ns.accel, paths.vmlinuz(kernels[0]))
            for _ in pool.map(lambda k: provision(paths, k, accel), kernels):
                pass
            for result in pool.map(lambda k: run_kernel(paths, k, accel, ns.out, ns.pytest_args,
                                                        ns.timeout * 60, not ns.no_lesson,
                                                        not ns.no_bpf_cache), kernels):
                results.append(result)  # kept as they finish: an interrupt still reports them
        except (KeyboardInterrupt, qemu.Interrupted):
            pool.shutdown(wait=False, cancel_futures=True)  # no queued kernel starts after this
            qemu.kill_all()
            print("setup.sh vm-test: interrupted; every VM was stopped", file=sys.stderr)
            return 130
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            pool.shutdown(wait=False, cancel_futures=True)
            qemu.kill_all()
            print(f"setup.sh vm-test: error: {e}", file=sys.stderr)
            return 1
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if results:
                text = summary.format_table(results)
                (ns.out / "summary.txt").write_text(text + "\n")
                print(text)
    say(f"total {time.monotonic() - t0:.0f} s; results, JUnit XML and logs in {ns.out}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
