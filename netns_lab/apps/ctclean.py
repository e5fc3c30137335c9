"""A lab's conntrack cleaner: `python -m netns_lab.apps.ctclean --lab LAB [--interval S]`, Felix's conntrack scan.

An entry that expired without its key being looked up again stays in the `ct` map (bpf/lib/maps.h)
until someone deletes it: the default LRU map evicts it only when full, and the plain-hash build never
does, so a map full of such entries refuses new connections there (DROP_CT_FULL). Every `--interval` seconds (10 by default, Felix's scan period) this
process runs the datapath's GC (ebpf_nodeport.datapath.gc_conntrack: the C's own expiry rules) on
every loaded node's pinned map, and logs a line for each pass that deleted anything. netns_lab/ctclean.py
starts it when the lab enters an eBPF mode and stops it when the lab leaves; it also exits by itself
once the lab is gone, or out of the eBPF modes with no datapath loaded. Runs in the root namespace, detached (its own
session); `down` kills it like the lab's apps, by `-m netns_lab.apps.* --lab LAB` on its command line.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

INTERVAL_S = 10.0


def one_pass(lab: str) -> dict[str, int] | None:
    """One GC pass over every loaded node of the lab: node -> entries deleted; None when the lab is gone, or
    out of the eBPF modes with no datapath left (the cleaner's cue to exit). A switch into an eBPF mode starts
    the cleaner before it saves the new mode, so loaded datapaths count as much as the mode. Reads the state
    without the lab's lock (saves are atomic renames); the GC needs none (the datapath deletes concurrently)."""
    from netns_lab import dataplane
    from netns_lab import state as lab_state

    st = lab_state.load(lab)
    if st is None:
        return None
    loaded = [node for node in st.nodes() if dataplane.is_loaded(st, node)]
    if not loaded and st.mode not in lab_state.EBPF_MODES:
        return None
    return {node: dataplane.datapath(st, node).gc() for node in loaded}


def main(argv: list[str] | None = None) -> int:
    """GC every node's conntrack every interval until the lab leaves the eBPF modes."""
    parser = argparse.ArgumentParser(prog="python -m netns_lab.apps.ctclean")
    parser.add_argument("--lab", required=True)
    parser.add_argument("--interval", type=float, default=INTERVAL_S, help="seconds between passes")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    print(time.strftime("%H:%M:%S"), f"conntrack cleaner of lab {args.lab}: a GC pass every {args.interval:g}s",
          flush=True)
    while True:
        t0 = time.monotonic()
        try:
            deleted = one_pass(args.lab)
        except Exception:  # a pin removed mid-pass (mode switch, down): logged, the next pass retries
            traceback.print_exc()
            deleted = {}
        if deleted is None:
            print(time.strftime("%H:%M:%S"), "lab gone or out of the eBPF modes: exiting", flush=True)
            return 0
        if any(deleted.values()):
            print(time.strftime("%H:%M:%S"), "expired conntrack entries deleted:",
                  ", ".join(f"{n} {c}" for n, c in deleted.items() if c),
                  f"({time.monotonic() - t0:.2f}s)", flush=True)
        time.sleep(max(0.0, args.interval - (time.monotonic() - t0)))


if __name__ == "__main__":
    sys.exit(main())
