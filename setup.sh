#!/usr/bin/env bash
# setup.sh: install netns-lab on Debian 12 (idempotent, fast when already done).
#
#   ./setup.sh           install: Debian packages, kernel headers (fallback link), bpffs,
#                        Python venv that sees BCC, netns-lab on PATH
#   ./setup.sh demo      install, then walk the whole lesson on the default lab (left up)
#   ./setup.sh test      install, run the whole test suite (unit, bpf, lab); exit status = pytest's
#                        (extra arguments go to pytest, e.g. ./setup.sh test -k kubeproxy)
#   ./setup.sh vm-test [KERNEL...] [-- PYTEST ARGS]
#                        tests/bpf, tests/lab and the lesson in a qemu VM per Debian kernel
#                        (5.10 6.1 6.12, default all); images cached in /var/cache/netns-lab/vm;
#                        test paths after -- replace tests/bpf tests/lab
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/opt/netns-lab
VENV="$PREFIX/venv"
BIN_LINK=/usr/local/bin/netns-lab

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

cmd="${1:-install}"
[ $# -gt 0 ] && shift
case "$cmd" in
    install | demo | test | vm-test) ;;
    -h | --help | help) usage; exit 0 ;;
    *) die "unknown command '$cmd' (use: ./setup.sh [demo|test|vm-test])" ;;
esac
[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0 $cmd)"
[ -r /etc/debian_version ] || die "this script targets Debian 12; /etc/debian_version not found"

install_packages() {
    local arch pkgs missing=() p
    arch="$(dpkg --print-architecture)"
    pkgs=(python3-bpfcc libbpfcc bpfcc-tools "linux-headers-$arch" iproute2 iptables tcpdump curl
          iperf3 bpftool python3-venv nftables gcc libc6-dev)
    for p in "${pkgs[@]}"; do
        if [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" != "ii " ]; then
            missing+=("$p")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages: all ${#pkgs[@]} already installed"
        return
    fi
    say "Debian packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

kernel_headers() {
    local rel mod newest base
    rel="$(uname -r)"
    mod="/lib/modules/$rel"
    if [ -e "$mod/build" ]; then
        say "kernel headers: $mod/build present"
        return
    fi
    # BCC compiles against /lib/modules/$(uname -r)/build. A kernel without a headers package
    # (cloud/VM kernels) gets Debian 12's 6.1 headers instead: the UAPI BCC needs is stable.
    newest="$(ls -d /lib/modules/6.1.*/build 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$newest" ] || die "no headers for kernel $rel and no Debian 6.1 headers under /lib/modules to fall back to"
    base="$(dirname "$newest")"
    mkdir -p "$mod"
    ln -sfn "$base/build" "$mod/build"
    [ -e "$base/source" ] && ln -sfn "$base/source" "$mod/source"
    say "kernel headers: none for running kernel $rel; FALLBACK: linked $mod/{build,source} -> $base/{build,source}"
}

bpffs() {
    if mountpoint -q /sys/fs/bpf; then
        say "bpffs: mounted at /sys/fs/bpf"
    else
        mkdir -p /sys/fs/bpf
        mount -t bpf bpf /sys/fs/bpf
        say "bpffs: mounted it at /sys/fs/bpf"
    fi
}

python_env() {
    local stamp want
    if [ ! -x "$VENV/bin/python" ] || ! grep -qs '^include-system-site-packages = true' "$VENV/pyvenv.cfg"; then
        say "python: creating $VENV (from /usr/bin/python3, --system-site-packages so Debian's bcc module is visible)"
        mkdir -p "$PREFIX"
        /usr/bin/python3 -m venv --clear --system-site-packages "$VENV"
    else
        say "python: venv $VENV present"
    fi
    "$VENV/bin/python" -c 'import bcc' 2>/dev/null \
        || die "BCC's python module is not importable from $VENV (is python3-bpfcc installed?)"
    # Re-install only when pyproject.toml or the repository location changed.
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) $REPO"
    stamp="$VENV/.netns-lab-installed"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
        && [ "$("$VENV/bin/python" -c 'import netns_lab, os; print(os.path.dirname(os.path.dirname(netns_lab.__file__)))' 2>/dev/null)" = "$REPO" ]; then
        say "python: $REPO already installed (editable) in the venv"
    else
        say "python: pip install -e $REPO[test,bench]"
        "$VENV/bin/pip" install --disable-pip-version-check -q -e "$REPO[test,bench]"
        printf '%s\n' "$want" >"$stamp"
    fi
    ln -sfn "$VENV/bin/netns-lab" "$BIN_LINK"
    say "netns-lab: $BIN_LINK -> $VENV/bin/netns-lab"
}

install_all() {
    install_packages
    kernel_headers
    bpffs
    python_env
}

demo() {
    say "walking the lesson on lab 'default' (netns-lab lesson --keep): kube-proxy, eBPF, source IP, DSR"
    netns-lab lesson --keep
    say "the lab is still up; next: netns-lab status, netns-lab dump conntrack, netns-lab down"
}

run_tests() {
    local rc=0
    cd "$REPO"
    say "running the test suite: $VENV/bin/pytest tests/unit tests/bpf tests/lab $*"
    "$VENV/bin/pytest" -ra tests/unit tests/bpf tests/lab "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        die "pytest collected no tests (exit 5): treated as a failure"
    fi
    return "$rc"
}

vm_test() {
    # The host only drives qemu: it needs the VM tools, not the project's venv. The project is
    # installed inside each VM by this same script (images: netns_lab/vm/image.py).
    local pkgs=(qemu-system-x86 qemu-utils debootstrap e2fsprogs python3) missing=() p
    for p in "${pkgs[@]}"; do
        [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" = "ii " ] || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "vm-test: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    cd "$REPO"
    PYTHONPATH="$REPO" exec /usr/bin/python3 -m netns_lab.vm "$@"
}

[ "$cmd" = vm-test ] && vm_test "$@"
install_all
case "$cmd" in
    install) say "done; try: ./setup.sh demo" ;;
    demo) demo ;;
    test) run_tests "$@" ;;
esac
