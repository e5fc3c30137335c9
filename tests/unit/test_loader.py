"""loader.relocate_map_fds on hand-made instructions: what it swaps and what it refuses."""
from __future__ import annotations

import struct

import pytest

from ebpf_nodeport.loader import LoaderError, load_nodes, relocate_map_fds


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_imm64(dst: int, imm: int, src: int = 0, high: int = 0) -> bytes:
    """The two slots of a 64-bit immediate load (src_reg says what imm is)."""
    return insn(0x18, dst, src, 0, imm) + insn(0, 0, 0, 0, high)


EXIT = insn(0x95)
CALL_HELPER = insn(0x85, imm=1)          # bpf_map_lookup_elem


def test_map_fds_are_swapped_everything_else_kept() -> None:
    prog = (ld_imm64(1, 7, src=1) + CALL_HELPER + ld_imm64(2, 7, src=0) +
            ld_imm64(1, 9, src=1) + EXIT)
    out = relocate_map_fds(prog, {7: 40, 9: 41})
    assert out == (ld_imm64(1, 40, src=1) + CALL_HELPER + ld_imm64(2, 7, src=0) +
                   ld_imm64(1, 41, src=1) + EXIT)


def test_second_slot_of_ld_imm64_is_not_read_as_an_instruction() -> None:
    # The high half of a plain 64-bit constant can look like a map-fd load: left alone.
    prog = insn(0x18, 1, 0, 0, 5) + ld_imm64(0, 7, src=1)[:8] + EXIT
    assert relocate_map_fds(prog, {7: 40}) == prog


def test_unknown_map_fd_is_refused() -> None:
    with pytest.raises(LoaderError, match="map fd 8, which is not one of"):
        relocate_map_fds(ld_imm64(1, 8, src=1) + EXIT, {7: 40})


@pytest.mark.parametrize("src, kind", [(2, "BPF_PSEUDO_MAP_VALUE"), (3, "BPF_PSEUDO_BTF_ID"),
                                       (4, "BPF_PSEUDO_FUNC"), (5, "BPF_PSEUDO_MAP_IDX"),
                                       (6, "BPF_PSEUDO_MAP_IDX_VALUE"), (9, "unknown pseudo source 9")])
def test_other_pseudo_loads_are_refused(src: int, kind: str) -> None:
    with pytest.raises(LoaderError, match=f"instruction 1 is an ld_imm64 of {kind}"):
        relocate_map_fds(CALL_HELPER + ld_imm64(1, 7, src=src) + EXIT, {7: 40})


def test_module_kfunc_call_is_refused() -> None:
    with pytest.raises(LoaderError, match="fd_array slot 3"):
        relocate_map_fds(insn(0x85, src=2, off=3, imm=1234) + EXIT, {})
    vmlinux_kfunc = insn(0x85, src=2, off=0, imm=1234) + EXIT    # a BTF id of vmlinux, no fd
    assert relocate_map_fds(vmlinux_kfunc, {}) == vmlinux_kfunc


def test_truncated_program_is_refused() -> None:
    with pytest.raises(LoaderError, match="not a whole number"):
        relocate_map_fds(EXIT + b"\0" * 4, {})


@pytest.mark.parametrize("bad", ["relative/control", "/sys/fs/bpf/x/../control", '/sys/fs/bpf/"q"',
                                 "/sys/fs/bpf/a b", "/sys/fs/bpf/x\\y", ""])
def test_load_nodes_checks_pin_dirs_before_compiling(bad: str) -> None:
    """A pin directory goes into the C as a string literal and names where pins go: only an
    absolute path of plain parts is taken, and every one is checked before the compile."""
    with pytest.raises(LoaderError, match="invalid pin directory"):
        load_nodes({"control": "/sys/fs/bpf/x/control", "bad": bad})
    assert load_nodes({}) == {}
