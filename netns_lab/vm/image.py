"""Build and cache the VM images: a Debian 12 root (debootstrap) plus one kernel and its headers.

Layout under the cache dir (default /var/cache/netns-lab/vm):
  base-<key>/            bookworm root with setup.sh's packages and bookworm's own kernel (6.1)
  root-<kernel>-<key>/   copy of the base with another suite's kernel + headers unpacked in
  <kernel>-<key>.img     ext4 disk made from that root; provisioned (setup.sh run inside) once
  <kernel>-<key>.vmlinuz / .initrd   what qemu boots
<key> hashes setup.sh's package list and the recipe, so a changed list builds new images.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from .matrix import USERLAND_SUITE, Kernel, debian_mirror

# Plumbing the guest needs beyond setup.sh's own list: an initramfs that finds a virtio disk,
# module loading, and the tools the lab and diags call.
VM_PACKAGES = [
    "linux-image-amd64", "initramfs-tools", "zstd", "xz-utils", "kmod", "procps", "iputils-ping",
    "nftables", "ca-certificates", "python3", "less",
]
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DISK_SIZE = "12G"
GUEST_INIT = "/usr/local/sbin/netns-lab-vm-init"

# The image's init: mounts just enough to reach the shared checkout, then hands over to the
# checkout's guest.sh, so the guest logic changes without rebuilding images.
INIT_SCRIPT = """#!/bin/sh
# netns-lab VM init (written by netns_lab/vm/image.py): mount the checkout, run its guest.sh.
mount -t proc proc /proc 2>/dev/null    # usually moved here by the initramfs already
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
modprobe -a 9pnet_virtio 9p 2>/dev/null
mkdir -p /mnt/src /mnt/out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro src /mnt/src
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /mnt/out
# bash reads a script as it runs: run a private copy, so editing the checkout cannot upset it.
cp /mnt/src/netns_lab/vm/guest.sh /usr/local/sbin/netns-lab-vm-guest 2>/dev/null \
    && exec /bin/bash /usr/local/sbin/netns-lab-vm-guest
echo "netns-lab-vm-init: checkout not shared; powering off" >&2
echo o >/proc/sysrq-trigger
"""

Log = Callable[[str], None]


def run(cmd: list[str], log_file: Path, **kw) -> None:
    """Run a build command with its output appended to log_file; CalledProcessError on failure."""
    with open(log_file, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, **kw)


def host_mirror() -> str:
    """The Debian mirror this host's apt is configured with (the only archive we may use)."""
    texts = []
    for p in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            texts.append(Path(p).read_text())
        except OSError:
            continue
    return debian_mirror(texts)


class Paths:
    """Where one key's artefacts live in the cache."""

    def __init__(self, cache: Path, key: str):
        self.cache, self.key = cache, key
        self.base = cache / f"base-{key}"

    def root(self, k: Kernel) -> Path:
        return self.base if k.suite == USERLAND_SUITE else self.cache / f"root-{k.name}-{self.key}"

    def disk(self, k: Kernel) -> Path:
        return self.cache / f"{k.name}-{self.key}.img"

    def vmlinuz(self, k: Kernel) -> Path:
        return self.cache / f"{k.name}-{self.key}.vmlinuz"

    def initrd(self, k: Kernel) -> Path:
        return self.cache / f"{k.name}-{self.key}.initrd"

    def provisioned(self, k: Kernel) -> Path:
        return self.cache / f"{k.name}-{self.key}.provisioned"

    def log(self, name: str) -> Path:
        return self.cache / f"build-{name}-{self.key}.log"


def build_base(paths: Paths, packages: list[str], say: Log) -> Path:
    """debootstrap the bookworm root once (setup.sh's packages preinstalled) and return it."""
    if (paths.base / ".complete").exists():
        return paths.base
    tmp = paths.base.with_name(paths.base.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log = paths.log("base")
    mirror = host_mirror()
    include = ",".join(dict.fromkeys(packages + VM_PACKAGES))
    say(f"debootstrap {USERLAND_SUITE} from {mirror} into {tmp} (log: {log})")
    run(["debootstrap", "--variant=minbase", f"--include={include}", USERLAND_SUITE, str(tmp), mirror],
        log)
    (tmp / ".complete").write_text("ok\n")
    tmp.rename(paths.base)
    return paths.base


def configure_root(root: Path) -> None:
    """Guest settings: init stub, hostname, DNS of qemu's user network, no password for root."""
    init = root / GUEST_INIT.lstrip("/")
    init.parent.mkdir(parents=True, exist_ok=True)
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    (root / "etc/hostname").write_text("netns-lab-vm\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 netns-lab-vm\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw 0 1\n")


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
GUEST_CA_BUNDLE = "etc/ssl/certs/netns-lab-host-ca.crt"


def trust_host_cas(root: Path) -> None:
    """Let the guest's pip trust what the host trusts: it fetches through the host's network,
    which may be behind a TLS-intercepting proxy whose CA only the host's bundle has."""
    if HOST_CA_BUNDLE.exists():
        shutil.copyfile(HOST_CA_BUNDLE, root / GUEST_CA_BUNDLE)
        (root / "etc/pip.conf").write_text(f"[global]\ncert = /{GUEST_CA_BUNDLE}\n")


def apt_opts(cache: Path, suite: str) -> list[str]:
    """apt options for a private view of one suite on the host's mirror (the host's apt untouched)."""
    d = cache / f"apt-{suite}"
    (d / "lists/partial").mkdir(parents=True, exist_ok=True)
    (d / "archives/partial").mkdir(parents=True, exist_ok=True)
    (d / "parts").mkdir(exist_ok=True)
    (d / "sources.list").write_text(f"deb [signed-by={KEYRING}] {host_mirror()} {suite} main\n")
    return [
        "-o", f"Dir::Etc::SourceList={d / 'sources.list'}", "-o", f"Dir::Etc::SourceParts={d / 'parts'}",
        "-o", f"Dir::State::Lists={d / 'lists'}", "-o", f"Dir::Cache::Archives={d / 'archives'}",
        "-o", f"Dir::Cache::pkgcache={d / 'pkgcache.bin'}", "-o", f"Dir::Cache::srcpkgcache={d / 'srcpkgcache.bin'}",
        "-o", "APT::Architecture=amd64", "-o", "APT::Architectures=amd64",
    ]


def first_depends(output: str, prefix: str) -> str:
    """The first `Depends: <prefix>...` package named in `apt-cache depends` output."""
    for line in output.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(\S+)", line)
        if m and m.group(1).startswith(prefix):
            return m.group(1)
    raise ValueError(f"no dependency starting with {prefix!r}")


def kernel_debs(paths: Paths, k: Kernel, say: Log) -> list[Path]:
    """Download the suite's current kernel image and its own headers (-amd64 and -common)."""
    opts = apt_opts(paths.cache, k.suite)
    log = paths.log(k.name)
    run(["apt-get", *opts, "update", "-q"], log)

    def depends(pkg: str) -> str:
        return subprocess.run(["apt-cache", *opts, "depends", pkg], check=True, capture_output=True,
                              text=True).stdout

    image = first_depends(depends("linux-image-amd64"), "linux-image-")
    release = image.removeprefix("linux-image-")
    headers = f"linux-headers-{release}"
    common = first_depends(depends(headers), "linux-headers-")
    say(f"kernel {k.name}: {image}, {headers}, {common} from {k.suite}")
    out = paths.cache / f"debs-{k.suite}"
    out.mkdir(exist_ok=True)
    for f in out.glob("*.deb"):
        f.unlink()
    run(["apt-get", *opts, "download", image, headers, common], log, cwd=out)
    return sorted(out.glob("*.deb"))


def unpack_merged_usr(deb: Path, root: Path, log: Path) -> None:
    """Unpack a .deb into a merged-/usr root: /lib, /bin, /sbin land under usr/ (never replace the links)."""
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        run(["dpkg-deb", "-x", str(deb), tmp], log)
        for top in sorted(os.listdir(tmp)):
            dest = root / ("usr/" + top if top in ("lib", "bin", "sbin", "lib64") else top)
            dest.mkdir(parents=True, exist_ok=True)
            run(["cp", "-a", f"{tmp}/{top}/.", str(dest)], log)


def kernel_release(root: Path, suite_prefix: str | None = None) -> str:
    """The kernel release installed in a root (from its /boot/vmlinuz-*), newest first."""
    rels = [p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*")]
    if suite_prefix:
        rels = [r for r in rels if r.startswith(suite_prefix)]
    if not rels:
        raise ValueError(f"no kernel in {root}/boot")
    return sorted(rels, key=lambda r: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", r)])[-1]


def in_chroot(root: Path, cmd: str, log: Path) -> None:
    """Run a shell command chrooted into root with a private /proc, /sys and /dev (nothing leaks)."""
    script = (f"mount -t proc proc {root}/proc && mount -t sysfs sys {root}/sys && "
              f"mount --rbind /dev {root}/dev && chroot {root} /bin/sh -c '{cmd}'")
    run(["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script], log)


def build_kernel_root(paths: Paths, k: Kernel, say: Log) -> tuple[Path, str]:
    """The root for kernel k and its release: the base itself for 6.1, else a copy with k unpacked."""
    root = paths.root(k)
    if root == paths.base:
        return root, kernel_release(root)
    if (root / ".complete").exists():
        return root, (root / ".kernel-release").read_text().strip()
    log = paths.log(k.name)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"kernel {k.name}: copying the base root to {tmp}")
    run(["cp", "-a", "--reflink=auto", str(paths.base), str(tmp)], log)
    (tmp / ".complete").unlink()
    debs = kernel_debs(paths, k, say)
    for deb in debs:
        unpack_merged_usr(deb, tmp, log)
    image = next(d for d in debs if d.name.startswith("linux-image-"))
    release = image.name.split("_")[0].removeprefix("linux-image-")
    if not (tmp / "lib").is_symlink():
        raise RuntimeError(f"{tmp}/lib is no longer a symlink: the merged-/usr root was broken")
    say(f"kernel {k.name}: depmod + initramfs for {release}")
    in_chroot(tmp, f"depmod {release} && update-initramfs -c -k {release}", log)
    (tmp / ".kernel-release").write_text(release + "\n")
    (tmp / ".complete").write_text("ok\n")
    tmp.rename(root)
    return root, release


def build_disk(paths: Paths, k: Kernel, say: Log) -> None:
    """ext4 disk image + kernel + initrd for k, from its root (skipped when already built)."""
    disk = paths.disk(k)
    if disk.exists() and paths.vmlinuz(k).exists() and paths.initrd(k).exists():
        return
    root, release = build_kernel_root(paths, k, say)
    log = paths.log(k.name)
    tmp = disk.with_name(disk.name + ".tmp")
    tmp.unlink(missing_ok=True)
    say(f"kernel {k.name}: making {disk} ({DISK_SIZE} sparse ext4) from {root}")
    configure_root(root)  # the current init stub and settings, also in a root built by older code
    trust_host_cas(root)
    run(["truncate", "-s", DISK_SIZE, str(tmp)], log)
    run(["mkfs.ext4", "-q", "-F", "-L", "netnslab", "-d", str(root), str(tmp)], log)
    shutil.copyfile(root / f"boot/vmlinuz-{release}", paths.vmlinuz(k))
    shutil.copyfile(root / f"boot/initrd.img-{release}", paths.initrd(k))
    tmp.rename(disk)
