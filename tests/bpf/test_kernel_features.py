"""The load-time kernel probe against the running kernel: it must tell present from missing helpers."""
from __future__ import annotations

import errno
import os

import pytest

from ebpf_nodeport import kernel

BPF_FUNC_KTIME_GET_NS = 5  # in every kernel that has BPF


@pytest.mark.parametrize("helper_id,present", [(BPF_FUNC_KTIME_GET_NS, True), (100_000, False)])
def test_probe_tells_present_from_missing(helper_id: int, present: bool) -> None:
    f = kernel.Feature("HAVE_X", "x", helper_id, "1.0", "none")
    assert kernel._probe_helper(f) is present


@pytest.mark.parametrize("feature", kernel.FEATURES, ids=lambda f: f.define)
def test_probe_matches_the_mainline_version(feature: kernel.Feature) -> None:
    """On the matrix's Debian kernels (no backports of these helpers) presence follows the release."""
    assert kernel.features()[feature.define] is kernel._release_at_least(feature.since, os.uname().release)


def test_defines_are_the_present_features() -> None:
    assert kernel.feature_defines() == {d: 1 for d, ok in kernel.features().items() if ok}



def test_checksum_complete_probe_agrees_with_the_flag_being_accepted() -> None:
    """A kernel that takes BPF_F_TEST_SKB_CHECKSUM_COMPLETE for a harmless program checks it
    (the probe sees EBADMSG); one that refuses it (5.10: EINVAL) must probe as missing. Not a
    version check: Debian's 6.1 has the 6.11 flag (a stable backport)."""
    from ebpf_nodeport import libbpf

    fd = libbpf.prog_load(libbpf.BPF_PROG_TYPE_SCHED_CLS, "np_harmless", kernel._helper_call_prog(BPF_FUNC_KTIME_GET_NS))
    try:
        libbpf.prog_test_run(fd, bytes(12) + b"\x08\x00" + bytes(50), flags=kernel.BPF_F_TEST_SKB_CHECKSUM_COMPLETE)
        accepted = True
    except OSError as exc:
        assert exc.errno == errno.EINVAL, exc
        accepted = False
    finally:
        os.close(fd)
    assert kernel.test_run_checksum_complete() is accepted


@pytest.fixture
def two_netns():
    """Two named network namespaces (paths under /run/netns) and a scratch cgroup parent."""
    import subprocess

    from ebpf_nodeport.testrun import unique_name
    from netns_lab import cgroups

    names = [unique_name() + s for s in ("a", "b")]
    parent = cgroups.cgroup2_root() / cgroups.TOP
    parent.mkdir(exist_ok=True)
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
        yield [f"/run/netns/{n}" for n in names], str(parent)
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_netns_cookie_without_the_socket_option_is_the_kernels(two_netns) -> None:
    """The cookie connect.c compares (bpf_get_netns_cookie) as read without SO_NETNS_COOKIE
    (5.14; 5.10 lacks it): one per namespace, stable, and where the socket option exists,
    the value it gives."""
    import socket
    import struct

    from ebpf_nodeport import ctlb
    from ebpf_nodeport.netns import Netns

    paths, parent = two_netns
    got = [ctlb._cookie_by_program(Netns(p), parent) for p in paths]
    assert all(got) and got[0] != got[1]
    assert ctlb._cookie_by_program(Netns(paths[0]), parent) == got[0]
    assert [ctlb.netns_cookie(Netns(p), parent) for p in paths] == got
    try:
        with Netns(paths[0]).socket() as s:
            sockopt = struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, ctlb.SO_NETNS_COOKIE, 8))[0]
    except OSError as exc:
        assert exc.errno == errno.ENOPROTOOPT, exc  # 5.10: the program's reading is the only one
        return
    assert sockopt == got[0]
    assert not [d for d in os.listdir(parent) if d.startswith("netns-cookie-")]
