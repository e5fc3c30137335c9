"""What the running kernel's BPF offers: probed once at load time, turned into C defines.

The datapath targets the kernels Calico supports (5.10 on). Where a newer kernel has a
cheaper helper, the C uses it behind a HAVE_* define that only this probe sets, and falls
back to the older helper otherwise (bpf/lib/compat.h). Each probe loads a three-instruction
SCHED_CLS program calling the helper: the verifier refuses an unknown helper id with EINVAL.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import re
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    """One optional kernel feature: the helper probed, the define it gives, and its fallback."""

    define: str  # C macro set to 1 when present
    helper: str  # BPF helper name (bpf_<name>)
    helper_id: int  # its number in enum bpf_func_id (UAPI: stable)
    since: str  # first mainline kernel with it
    fallback: str  # what the datapath does without it


FEATURES: tuple[Feature, ...] = (
    Feature("HAVE_KTIME_COARSE", "ktime_get_coarse_ns", 160, "5.11",
            "conntrack clock is bpf_ktime_get_ns (CLOCK_MONOTONIC) instead of the coarse clock, "
            "read on every packet instead of once per jiffy and CPU"),
)

_BPF_CALL, _BPF_MOV64_IMM, _BPF_EXIT = 0x85, 0xB7, 0x95


def _helper_call_prog(helper_id: int) -> bytes:
    """call helper; r0 = 0; exit: the smallest program that makes the verifier look up a helper."""
    insn = struct.Struct("<BBhi")
    return (insn.pack(_BPF_CALL, 0, 0, helper_id) + insn.pack(_BPF_MOV64_IMM, 0, 0, 0)
            + insn.pack(_BPF_EXIT, 0, 0, 0))


def _release_at_least(version: str, release: str | None = None) -> bool:
    """uname's release >= version (major.minor): the guess when a probe cannot load programs."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    want = tuple(int(x) for x in version.split("."))
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= want


def _probe_helper(f: Feature) -> bool:
    """Does the kernel accept a SCHED_CLS program calling f's helper? (uname's guess without root)."""
    from . import libbpf

    try:
        fd = libbpf.prog_load(libbpf.BPF_PROG_TYPE_SCHED_CLS, "np_probe", _helper_call_prog(f.helper_id))
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            return _release_at_least(f.since)
        return False
    os.close(fd)
    return True


@functools.cache
def features() -> dict[str, bool]:
    """define -> present, for every optional feature (probed once per process)."""
    return {f.define: _probe_helper(f) for f in FEATURES}


def has(define: str) -> bool:
    """Whether the running kernel has the feature behind define (e.g. HAVE_KTIME_COARSE)."""
    return features()[define]


def feature_defines() -> dict[str, object]:
    """The C defines for the present features, passed to every datapath compile."""
    return {d: 1 for d, present in features().items() if present}


def missing() -> list[Feature]:
    """The features this kernel lacks (what the datapath falls back from)."""
    return [f for f in FEATURES if not features()[f.define]]


# ---- test-run features (the harness, not the datapath) ----------------------------------

BPF_F_TEST_SKB_CHECKSUM_COMPLETE = 1 << 2
_BPF_ST_MEM_B, _BPF_ALU64_ADD_IMM, _BPF_MOV64_REG = 0x72, 0x07, 0xBF
_BPF_FUNC_SKB_STORE_BYTES = 9


def _corrupting_prog() -> bytes:
    """Write one byte at offset 30 with bpf_skb_store_bytes and no checksum update; return OK.

    Where the kernel honours BPF_F_TEST_SKB_CHECKSUM_COMPLETE, skb->csum no longer matches
    the bytes and the run fails with EBADMSG: that is what the probe looks for."""
    insn = struct.Struct("<BBhi")
    return b"".join([
        insn.pack(_BPF_MOV64_REG, 6 | 1 << 4, 0, 0),          # r6 = r1 (ctx)
        insn.pack(_BPF_ST_MEM_B, 10, -8, 0x5A),               # *(u8 *)(r10 - 8) = 0x5a
        insn.pack(_BPF_MOV64_REG, 1 | 6 << 4, 0, 0),          # r1 = r6
        insn.pack(_BPF_MOV64_IMM, 2, 0, 30),                  # r2 = 30 (offset)
        insn.pack(_BPF_MOV64_REG, 3 | 10 << 4, 0, 0),         # r3 = r10
        insn.pack(_BPF_ALU64_ADD_IMM, 3, 0, -8),              # r3 -= 8
        insn.pack(_BPF_MOV64_IMM, 4, 0, 1),                   # r4 = 1 (len)
        insn.pack(_BPF_MOV64_IMM, 5, 0, 0),                   # r5 = 0 (flags: no csum fix-up)
        insn.pack(_BPF_CALL, 0, 0, _BPF_FUNC_SKB_STORE_BYTES),
        insn.pack(_BPF_MOV64_IMM, 0, 0, 0),                   # r0 = TC_ACT_OK
        insn.pack(_BPF_EXIT, 0, 0, 0),
    ])


@functools.cache
def test_run_checksum_complete() -> bool:
    """Does BPF_PROG_TEST_RUN honour BPF_F_TEST_SKB_CHECKSUM_COMPLETE (6.11+)?

    Older kernels refuse the flag (5.10: EINVAL); stable kernels may have it backported (Debian's
    6.1 does): so no version check, and a run that breaks skb->csum must fail with EBADMSG."""
    from . import libbpf

    fd = libbpf.prog_load(libbpf.BPF_PROG_TYPE_SCHED_CLS, "np_probe_csum", _corrupting_prog())
    frame = bytes(12) + b"\x08\x00" + bytes(50)  # Ethernet (IPv4 type) + zeros: byte 30 changes
    try:
        libbpf.prog_test_run(fd, frame, flags=BPF_F_TEST_SKB_CHECKSUM_COMPLETE)
    except OSError as exc:
        return exc.errno == errno.EBADMSG
    finally:
        os.close(fd)
    return False
