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
import traceback

POLL_S = 1.0
RETRY_S = 5.0  # after a failed finish (e.g. the lab's lock held by a long command)
MAX_FAILURES = 3  # then the reaper exits; the next graceful delete starts a new one


def main(argv: list[str] | None = None) -> int:
    """Finish the lab's expired graceful deletions until none is left."""
    parser = argparse.ArgumentParser(prog="python -m netns_lab.apps.grace")
    parser.add_argument("--lab", required=True)
    args = parser.parse_args(argv)
    from netns_lab.lab import Lab

    lab = Lab(args.lab, progress=lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True))
    failures = 0
    while True:
        try:
            done, nxt = lab.finish_terminating()
            failures = 0
        except Exception:  # logged; retried a few times (the lab may be busy), then left to the next delete
            traceback.print_exc()
            failures += 1
            if failures >= MAX_FAILURES:
                return 1
            time.sleep(RETRY_S)
            continue
        if nxt is None:
            return 0
        time.sleep(max(0.05, min(POLL_S, nxt - time.time())))


if __name__ == "__main__":
    sys.exit(main())
