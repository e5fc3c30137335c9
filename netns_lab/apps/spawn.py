"""Start many apps at once: one process imports the apps once and forks each pod's app into its namespace.

Why: every app as its own `ip netns exec ... python -m netns_lab.apps.<app>` costs an interpreter
start and the imports (~80 ms of CPU each): 40 s of `up` for a 500-pod lab on 2 cores. A fork of
an interpreter that has imported everything costs ~1-2 ms, and the children share its pages.
Each child is what the app's own command would be: its own session, the pod's network
namespace (setns), stdin /dev/null, stdout and stderr appended to the pod's log, then the app's
main(). Its command line stays this process's (`-m netns_lab.apps.spawn --lab <lab>`), so
clean-up still recognises it by `--lab` (and by its namespace).

Protocol: stdin one JSON object per line {"pod", "netns", "log", "app", "argv"} (argv: the app's
arguments); stdout "<pod> <pid>" per line, as each child is forked. Exits when stdin closes.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
import traceback

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def _handler(mod: object) -> type:
    """The app's request handler: the AppHandler subclass its module defines."""
    from netns_lab.apps.common import AppHandler

    return next(v for v in vars(mod).values()
                if isinstance(v, type) and issubclass(v, AppHandler) and v.__module__ == mod.__name__)  # type: ignore[attr-defined]


def _child(libc: ctypes.CDLL, ns_fd: int, log_fd: int, app: str, handler: type, argv: list[str]) -> None:
    """In the forked child: session, namespace, log, then the app (never returns)."""
    code = 1
    try:
        os.setsid()
        if libc.setns(ns_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in (null, ns_fd, log_fd):
            os.close(fd)
        os.chdir("/")
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered, as `python -u` would be
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        from netns_lab.apps.common import main

        main(app, handler, argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def main() -> None:
    """Read pod specs from stdin, fork one app per line."""
    libc = ctypes.CDLL(None, use_errno=True)
    handlers: dict[str, type] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        spec = json.loads(line)
        app = spec["app"]
        if app not in handlers:
            handlers[app] = _handler(importlib.import_module(f"netns_lab.apps.{app}"))
        ns_fd = os.open(os.path.join(NETNS_DIR, spec["netns"]), os.O_RDONLY | os.O_CLOEXEC)
        log_fd = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(libc, ns_fd, log_fd, app, handlers[app], spec["argv"])
        os.close(ns_fd)
        os.close(log_fd)
        print(spec["pod"], pid, flush=True)


if __name__ == "__main__":
    if "--lab" not in sys.argv:
        sys.exit("usage: python -m netns_lab.apps.spawn --lab LAB < specs")
    main()
