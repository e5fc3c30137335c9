"""A lab's grace reaper: `python -m netns_lab.apps.grace --lab LAB`, started by `delete pod --grace-period S`.

Sleeps until the earliest deletionTimestamp of the lab's terminating pods (re-reading the state
at least every second, so a shortened grace period or a pod deleted meanwhile is seen), then has
the lab finish those deletions under its lock (Lab.finish_terminating), and exits once no pod is
terminating or the lab is gone. Runs in the root namespace, detached (its own session); `down`
kills it like the lab's apps, by `-m netns_lab.apps.* --lab LAB` on its command line.
"""

from __future__ import annotations

import argparse
import sys
import time

POLL_S = 1.0


def main(argv: list[str] | None = None) -> int:
    """Finish the lab's expired graceful deletions until none is left."""
    parser = argparse.ArgumentParser(prog="python -m netns_lab.apps.grace")
    parser.add_argument("--lab", required=True)
    args = parser.parse_args(argv)
    from netns_lab.lab import Lab

    lab = Lab(args.lab, progress=lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True))
    while True:
        done, nxt = lab.finish_terminating()
        if nxt is None:
            return 0
        time.sleep(max(0.05, min(POLL_S, nxt - time.time())))


if __name__ == "__main__":
    sys.exit(main())
