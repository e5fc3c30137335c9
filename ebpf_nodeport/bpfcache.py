"""On-disk cache of BCC compiles: a load whose key was compiled before skips clang entirely.

A BCC compile of the datapath takes seconds on the host and over a minute in a TCG VM, and
every lab bring-up, mode switch and test cluster compiles the same text again. An entry
keeps what that compile handed the kernel:

- per program, its instructions, each map-fd ld_imm64 carrying the map's index instead of
  a (process-local) fd;
- per map, what recreates it identically: type, key/value sizes, capacity, flags, kernel
  name, and its BTF (the raw BTF object, loaded again with BPF_BTF_LOAD, and the key and
  value type ids), so pins.py and tests/bpf/test_abi.py read the same layouts from a map
  made from the cache as from one BCC made.

The key hashes everything the instructions can depend on: the source text as built
(without PIN_DIR: BCC puts the pin path into map creation only, never into the code), all
defines (the kernel feature probes' included), the kernel release and the headers BCC
compiled against, BCC's version, the compiler flags, the program and map names, and
FORMAT. The entry is JSON (no code is ever unpickled from disk).

Location: $NETNS_LAB_BPF_CACHE, else /var/cache/netns-lab/bpf; NETNS_LAB_BPF_CACHE=off
turns the cache off. It is not lab state: `netns-lab down --all` leaves it, and
`netns-lab cache clear` (or `rm -r` of the directory) empties it. An entry that cannot be
read, does not match the code (abi.py's map specs) or that the kernel refuses is removed
with one warning, and the load compiles as if there had been none.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from . import btf, libbpf
from .abi import MapSpec

log = logging.getLogger(__name__)

FORMAT = 1
ENV = "NETNS_LAB_BPF_CACHE"
DEFAULT_DIR = Path("/var/cache/netns-lab/bpf")
_OFF = {"off", "0", "no", "false", "none"}

__all__ = ["CacheError", "Entry", "MapRecord", "clear", "directory", "discard", "entries", "key", "read",
           "write"]


class CacheError(ValueError):
    """An entry that cannot be used (one line: why)."""


def directory() -> Path | None:
    """Where entries live, or None when the cache is turned off ($NETNS_LAB_BPF_CACHE=off)."""
    value = os.environ.get(ENV)
    if value is None or value == "":
        return DEFAULT_DIR
    return None if value.lower() in _OFF else Path(value)


def _bcc_version() -> str:
    try:
        import bcc
    except ImportError:        # pragma: no cover - the compile reports it
        return "none"
    return str(getattr(bcc, "__version__", "unknown"))


def key(text: str, defines: Mapping[str, object], programs: Iterable[str], maps: Iterable[str],
        cflags: Iterable[str]) -> str:
    """The entry name for one compile: a hash of all its code depends on (text without PIN_DIR)."""
    release = platform.release()
    parts = {
        "format": FORMAT,
        "kernel": release,
        "headers": os.path.realpath(f"/lib/modules/{release}/build"),
        "bcc": _bcc_version(),
        "cflags": list(cflags),
        "defines": sorted((k, repr(v)) for k, v in defines.items() if k != "PIN_DIR"),
        "programs": list(programs),
        "maps": list(maps),
        "text": text,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class MapRecord:
    """One map of a compile: enough to create it again (its index is its place in Entry.maps)."""
    name: str                 # the map's name in the C (and its pin's)
    info: libbpf.MapInfo      # type, sizes, capacity, flags, kernel name, BTF type ids
    btf: int                  # index into Entry.btf, -1 when the map has no BTF


@dataclass(frozen=True)
class Entry:
    """A compile: maps, their BTF objects, and programs whose map loads carry map indices."""
    maps: tuple[MapRecord, ...]
    btf: tuple[bytes, ...]
    programs: dict[str, bytes]

    def index(self) -> dict[str, int]:
        """Map name -> the index its programs' instructions carry."""
        return {m.name: i for i, m in enumerate(self.maps)}

    def check(self, specs: Mapping[str, MapSpec], programs: Iterable[str]) -> None:
        """CacheError unless the entry has these programs and each spec'd map as abi.py has it:
        type, sizes, capacity, flags and the key/value layouts its BTF gives."""
        missing = [p for p in programs if p not in self.programs]
        if missing:
            raise CacheError(f"no program {', '.join(missing)}")
        for p, insns in self.programs.items():
            if not insns or len(insns) % 8:
                raise CacheError(f"program {p}: {len(insns)} bytes is not a whole number of instructions")
        parsed = [btf.Btf(blob) for blob in self.btf]
        for m in self.maps:
            spec = specs.get(m.name)
            if spec is None:
                continue
            i = m.info
            have = (i.type, i.key_size, i.value_size, i.max_entries, i.map_flags)
            want = (spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.map_flags)
            if have != want:
                raise CacheError(f"map {m.name} is {have}, the code declares {want}")
            if m.btf < 0:
                continue
            if m.btf >= len(parsed):
                raise CacheError(f"map {m.name}: BTF object {m.btf} missing")
            b = parsed[m.btf]
            got = (b.layout(i.btf_key_type_id) if i.btf_key_type_id else None,
                   b.layout(i.btf_value_type_id) if i.btf_value_type_id else None)
            if got != (spec.key_layout, spec.value_layout):
                raise CacheError(f"map {m.name}: BTF layouts differ from abi.py")

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "btf": [base64.b64encode(b).decode() for b in self.btf],
            "maps": [{"name": m.name, "btf": m.btf, "info": asdict(m.info)} for m in self.maps],
            "programs": {p: base64.b64encode(i).decode() for p, i in self.programs.items()},
        })

    @classmethod
    def from_json(cls, text: str) -> "Entry":
        """Parse an entry; CacheError for anything malformed."""
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise CacheError(f"format {doc.get('format')!r}, this code writes {FORMAT}")
            blobs = tuple(base64.b64decode(b, validate=True) for b in doc["btf"])
            maps = tuple(MapRecord(str(m["name"]), libbpf.MapInfo(**m["info"]), int(m["btf"]))
                         for m in doc["maps"])
            progs = {str(p): base64.b64decode(i, validate=True) for p, i in doc["programs"].items()}
        except CacheError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CacheError(f"unreadable entry ({type(exc).__name__}: {exc})") from exc
        return cls(maps, blobs, progs)


def _path(k: str) -> Path | None:
    d = directory()
    return None if d is None else d / f"{k}.json"


def read(k: str) -> Entry | None:
    """The entry under key k; None when there is none, the cache is off, or it is unreadable
    (then it is removed, with one warning)."""
    path = _path(k)
    if path is None:
        return None
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        discard(k, f"unreadable ({exc})")
        return None
    try:
        return Entry.from_json(text)
    except CacheError as exc:
        discard(k, str(exc))
        return None


def write(k: str, entry: Entry) -> Path | None:
    """Store entry under key k (atomically: a reader sees the old file or the new); None when
    the cache is off or its directory is not writable (the load itself is unaffected)."""
    path = _path(k)
    if path is None:
        return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(entry.to_json())
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("BPF compile cache: cannot write %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
        return None
    return path


def discard(k: str, why: str) -> None:
    """Remove a bad entry, saying so once; the caller compiles instead."""
    path = _path(k)
    log.warning("BPF compile cache: entry %s not used, compiling instead: %s", path, why)
    if path is not None:
        try:
            path.unlink()
        except OSError:
            pass


def entries() -> list[Path]:
    """The entry files now in the cache (none when it is off or empty)."""
    d = directory()
    return sorted(d.glob("*.json")) if d is not None and d.is_dir() else []


def clear() -> int:
    """Remove every entry; how many were removed."""
    n = 0
    for path in entries():
        try:
            path.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
