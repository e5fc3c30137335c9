"""ebpf_nodeport.kernel: the probe program's encoding and the uname fallback (no kernel needed)."""
from __future__ import annotations

import struct

import pytest

from ebpf_nodeport import kernel
from netns_lab.diags import interfaces


def test_probe_program_calls_the_helper_then_exits() -> None:
    prog = kernel._helper_call_prog(160)
    insns = [struct.unpack("<BBhi", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert insns == [(0x85, 0, 0, 160), (0xB7, 0, 0, 0), (0x95, 0, 0, 0)]


@pytest.mark.parametrize("release,since,want", [
    ("5.10.0-35-amd64", "5.11", False),
    ("5.11.0", "5.11", True),
    ("6.1.0-50-amd64", "5.11", True),
    ("6.12.41+deb13-amd64", "5.11", True),
    ("garbage", "5.11", False),
])
def test_release_at_least(release: str, since: str, want: bool) -> None:
    assert kernel._release_at_least(since, release) is want


def test_every_feature_names_a_define_and_fallback() -> None:
    for f in kernel.FEATURES:
        assert f.define.startswith("HAVE_") and f.fallback and f.since


def test_interfaces_from_ip_json() -> None:
    assert interfaces('[{"ifindex":1,"ifname":"lo"},{"ifindex":2,"ifname":"eth0"}]') == ["lo", "eth0"]
    assert interfaces("") == []
