"""The struct layouts of a loaded map's key and value, read from the kernel's BTF.

Every map BCC creates (and every copy the loader makes of one) carries BTF: the
kernel keeps the compiled C's type information and names, per map, the key and value
types (BPF_OBJ_GET_INFO_BY_FD: btf_id, btf_key_type_id, btf_value_type_id). The BTF
object itself is fetched by id (BPF_BTF_GET_FD_BY_ID, then its info gives the raw
blob) and parsed here: enough of the format (kernel Documentation/bpf/btf.rst) to
turn a type into a Layout, the field names, byte offsets and sizes that abi.layout()
gives for the Python mirror. pins.py compares the two on every load.
"""
from __future__ import annotations

import ctypes as ct
import os
import struct
from dataclasses import dataclass

from . import libbpf
from .abi import Layout, LayoutField

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")       # magic, version, flags, hdr_len, type/str offsets+lengths
_TYPE = struct.Struct("<III")              # name_off, info, size_or_type

# kinds (include/uapi/linux/btf.h) and the bytes each one's record carries after the common part
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}
_SCALARS = {INT, ENUM, ENUM64, FLOAT}


def _extra_bytes(kind: int, vlen: int) -> int:
    if kind in (INT, VAR, DECL_TAG):
        return 4
    if kind == ARRAY:
        return 12
    if kind in (STRUCT, UNION, DATASEC, ENUM64):
        return 12 * vlen
    if kind in (ENUM, FUNC_PROTO):
        return 8 * vlen
    return 0


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    kind_flag: bool
    extra: bytes


class Btf:
    """A parsed BTF blob: types by id (1-based, 0 is void) and their layouts."""

    def __init__(self, blob: bytes):
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            _HEADER.unpack_from(blob)
        if magic != BTF_MAGIC:
            raise ValueError(f"not BTF (magic {magic:#x})")
        self._strings = blob[hdr_len + str_off: hdr_len + str_off + str_len]
        self._types: list[_Type | None] = [None]
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = _TYPE.unpack_from(blob, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += _TYPE.size
            n = _extra_bytes(kind, vlen)
            self._types.append(_Type(kind, self._name(name_off), size_or_type, bool(info >> 31), blob[pos: pos + n]))
            pos += n

    def _resolved(self, type_id: int) -> _Type:
        """The type behind typedefs and qualifiers."""
        t = self._types[type_id]
        while t is not None and t.kind in _MODIFIERS:
            t = self._types[t.size_or_type]
        if t is None:
            raise ValueError(f"BTF type {type_id} is void")
        return t

    def size(self, type_id: int) -> int:
        """sizeof() of a type."""
        t = self._resolved(type_id)
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", t.extra)
            return nelems * self.size(elem)
        if t.kind in _SCALARS or t.kind in (STRUCT, UNION):
            return t.size_or_type
        raise ValueError(f"BTF type {type_id} ({t.kind=}) has no size")

    def layout(self, type_id: int) -> Layout:
        """A struct's (name, offset, size) per member; anything else as one unnamed field."""
        t = self._resolved(type_id)
        if t.kind not in (STRUCT, UNION):
            return (LayoutField("", 0, self.size(type_id)),)
        fields = []
        for i in range(len(t.extra) // 12):
            name_off, member_type, offset = struct.unpack_from("<III", t.extra, 12 * i)
            bits = offset >> 24 if t.kind_flag else 0
            offset &= 0xFFFFFF if t.kind_flag else 0xFFFFFFFF
            if bits or offset % 8:
                raise ValueError(f"bitfield member in struct {t.name!r}: not a byte layout")
            fields.append(LayoutField(self._name(name_off), offset // 8, self.size(member_type)))
        return tuple(fields)

    def _name(self, name_off: int) -> str:
        """The NUL-terminated string at name_off of the string section ("" for 0: anonymous)."""
        return self._strings[name_off: self._strings.index(b"\0", name_off)].decode()


class _BtfInfo(ct.Structure):
    """struct bpf_btf_info (uapi)."""
    _fields_ = [("btf", ct.c_uint64), ("btf_size", ct.c_uint32), ("id", ct.c_uint32),
                ("name", ct.c_uint64), ("name_len", ct.c_uint32), ("kernel_btf", ct.c_uint32)]


def btf_blob(btf_id: int) -> bytes:
    """The raw BTF object the kernel holds under btf_id."""
    fd = libbpf.btf_get_fd_by_id(btf_id)
    try:
        info = _BtfInfo()
        libbpf.obj_info(fd, info)                       # first call: the size only
        buf = ct.create_string_buffer(info.btf_size)
        info = _BtfInfo(btf=ct.addressof(buf), btf_size=len(buf))
        libbpf.obj_info(fd, info)
        return buf.raw[: info.btf_size]
    finally:
        os.close(fd)


@dataclass(frozen=True)
class MapLayouts:
    """What BTF says a map holds; None where the map has no BTF type for it."""
    key: Layout | None
    value: Layout | None


def map_layouts(map_fd: int) -> MapLayouts:
    """Key and value layouts of an open map, from its BTF (both None without BTF)."""
    info = libbpf.map_info(map_fd)
    if not info.btf_id:
        return MapLayouts(None, None)
    btf = Btf(btf_blob(info.btf_id))
    return MapLayouts(btf.layout(info.btf_key_type_id) if info.btf_key_type_id else None,
                      btf.layout(info.btf_value_type_id) if info.btf_value_type_id else None)
