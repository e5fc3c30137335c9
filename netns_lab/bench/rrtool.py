"""The bench's TCP request/response tool (rr.c): compiled at run time with the system's cc, cached by source hash.

Why C and not the Python connection client: a TCP_RR transaction on veths costs the datapath
10-40 us, and a Python loop adds about as much per transaction, diluting the differences the
bench is after. netperf (the usual tool) is not packaged in Debian main; iperf3 has no
request/response mode. cc (gcc) comes with the base system here and is in setup.sh's list.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from netns_lab.errors import LabError

SOURCE = Path(__file__).with_name("rr.c")
CACHE = Path("/var/cache/netns-lab")


def binary() -> Path:
    """The compiled tool (built on first use, reused while rr.c is unchanged); LabError if cc is missing or fails."""
    src = SOURCE.read_bytes()
    out = CACHE / f"rr-{hashlib.sha256(src).hexdigest()[:12]}"
    if out.exists():
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise LabError("bench needs a C compiler for its request/response tool: apt-get install gcc libc6-dev (./setup.sh does)")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"cannot compile {SOURCE.name}: {proc.stderr.strip()[:300]}")
    tmp.replace(out)
    return out
