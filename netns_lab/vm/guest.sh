#!/bin/bash
# guest.sh: runs as PID 1's successor inside a netns-lab test VM (exec'd by the image's init).
#
# Reads its job from the kernel command line (netns_lab.mode=provision|test, netns_lab.pytest=
# base64(JSON) pytest words, test paths included), works on a copy of the read-only shared
# checkout, writes logs, JUnit XML and status.env to the shared out directory, then powers
# the VM off.
# Never returns: whatever happens, the last step is the power-off.
set -uo pipefail

OUT=/mnt/out
SRC=/opt/netns-lab/src          # fixed path: the venv's editable install points here
say() { printf '==> [guest] %s\n' "$*" | tee -a "$OUT/guest.log" >/dev/console; }
poweroff_now() { sync; echo 1 >/proc/sys/kernel/sysrq; echo o >/proc/sysrq-trigger; sleep 30; }
trap poweroff_now EXIT

arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^netns_lab\.$1=//p" | tail -n 1; }
mode="$(arg mode)"
: >"$OUT/guest.log"
status() { printf '%s=%s\n' "$1" "$2" >>"$OUT/status.env"; }
: >"$OUT/status.env"
status kernel "$(uname -r)"
stage_start=$(date +%s)
stage() {  # stage NAME: record the time the previous stage took (seconds), start the next
    local now; now=$(date +%s)
    [ -n "${stage_name:-}" ] && status "time_$stage_name" "$((now - stage_start))"
    stage_name="$1"; stage_start=$now
}

# Kernel file systems the project expects on a normal Debian host.
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -o remount,rw /
hostname netns-lab-vm
ip link set lo up
# qemu's user network (slirp): only used when setup.sh must fetch (provisioning, changed deps).
dev="$(ls /sys/class/net | grep -v '^lo$' | head -n 1)"
if [ -n "$dev" ]; then
    ip link set "$dev" up
    ip addr add 10.0.2.15/24 dev "$dev"
    ip route add default via 10.0.2.2
fi
# The BPF compile cache (ebpf_nodeport/bpfcache.py), kept on the host per kernel when shared.
mkdir -p /var/cache/netns-lab/bpf
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 bpfcache /var/cache/netns-lab/bpf 2>/dev/null \
    && bpf_cache_note="shared BPF compile cache ($(ls /var/cache/netns-lab/bpf | wc -l) entries)" \
    || bpf_cache_note="BPF compile cache starts empty"
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
export PYTHONUNBUFFERED=1  # pytest.log grows test by test: the host can watch a slow run
say "kernel $(uname -r), mode $mode, $(nproc) CPUs, $bpf_cache_note"

stage copy
say "copying the checkout to $SRC"
rm -rf "$SRC" && mkdir -p "$SRC"
tar -C /mnt/src --exclude=./.git --exclude=./vm-results --exclude='__pycache__' \
    --exclude='*.egg-info' --exclude=.pytest_cache -cf - . | tar -C "$SRC" -xf -
cd "$SRC" || exit 1

stage setup
say "./setup.sh install (the user's install path)"
./setup.sh install >"$OUT/setup.log" 2>&1
rc=$?
status setup_rc "$rc"
grep '^==>' "$OUT/setup.log" >/dev/console
if [ "$rc" -ne 0 ] || [ "$mode" = provision ]; then
    stage done
    exit 0
fi

stage pytest
# pytest words (test paths included: the host chose them, matrix.pytest_argv) travel
# base64(JSON) on the kernel command line, which splits on spaces.
mapfile -t words < <(python3 -c 'import base64, json, sys
for a in json.loads(base64.b64decode(sys.argv[1] or "W10=")): print(a)' "$(arg pytest)")
[ ${#words[@]} -gt 0 ] || words=(tests --ignore=tests/unit)
say "pytest -ra ${words[*]}"
/opt/netns-lab/venv/bin/python -m pytest -ra --durations=25 -p no:cacheprovider --junitxml="$OUT/junit.xml" \
    "${words[@]}" >"$OUT/pytest.log" 2>&1
rc=$?
status pytest_rc "$rc"
tail -n 40 "$OUT/pytest.log" >/dev/console

lrc=0
if [ "$(arg lesson)" != 0 ]; then
    stage lesson
    say "netns-lab lesson --name vmlesson --keep"
    /opt/netns-lab/venv/bin/python -m netns_lab lesson --name vmlesson --keep >"$OUT/lesson.log" 2>&1
    lrc=$?
    tail -n 5 "$OUT/lesson.log" >/dev/console
fi
status lesson_rc "$lrc"

if [ "$rc" -ne 0 ] || [ "$lrc" -ne 0 ]; then
    stage diags
    say "pytest exited $rc, lesson exited $lrc: collecting netns-lab diags --all --out diags/ (the lesson's lab is still up)"
    /opt/netns-lab/venv/bin/python -m netns_lab diags --all --out "$OUT/diags" >"$OUT/diags.log" 2>&1
fi
/opt/netns-lab/venv/bin/python -m netns_lab down --name vmlesson >>"$OUT/lesson.log" 2>&1
dmesg >"$OUT/dmesg.log" 2>&1
stage done
say "done"
