"""pins.converter: which layout changes carry entries over, and how the bytes move."""
from __future__ import annotations

import pytest

from ebpf_nodeport.abi import LayoutField as F
from ebpf_nodeport.pins import Unconvertible, converter

OLD = (F("a", 0, 4), F("b", 4, 2), F("c", 6, 2))
RAW = bytes([1, 2, 3, 4, 5, 6, 7, 8])

CASES = [
    # name, new layout, key?, expected bytes (None: Unconvertible)
    ("same", OLD, False, RAW),
    ("moved", (F("b", 0, 2), F("c", 2, 2), F("a", 4, 4)), False, bytes([5, 6, 7, 8, 1, 2, 3, 4])),
    ("renamed: new name zero", (F("a", 0, 4), F("bb", 4, 2), F("c", 6, 2)), False,
     bytes([1, 2, 3, 4, 0, 0, 7, 8])),
    ("added at the end", OLD + (F("d", 8, 4),), False, RAW + bytes(4)),
    ("resized", (F("a", 0, 4), F("b", 4, 4)), False, None),
    ("key field removed", (F("a", 0, 4), F("b", 4, 2)), True, None),
    ("key field added", OLD + (F("d", 8, 4),), True, RAW + bytes(4)),
    ("value field removed", (F("a", 0, 4), F("c", 4, 2)), False, bytes([1, 2, 3, 4, 7, 8])),
    ("nothing in common", (F("x", 0, 8),), False, None),
]


@pytest.mark.parametrize("name,new,key,want", CASES, ids=[c[0] for c in CASES])
def test_converter(name, new, key, want):
    if want is None:
        with pytest.raises(Unconvertible):
            converter(OLD, new, key=key)
    else:
        assert converter(OLD, new, key=key)(RAW) == want


def test_scalar_copies_as_a_whole():
    assert converter((F("", 0, 4),), (F("", 0, 4),), key=True)(b"abcd") == b"abcd"


def test_no_btf_is_unconvertible():
    with pytest.raises(Unconvertible, match="no BTF"):
        converter(None, OLD, key=False)
