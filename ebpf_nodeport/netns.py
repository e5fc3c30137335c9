"""Netns: the one way into a network namespace, for code and for netlink, without forking.

setns(CLONE_NEWNET) moves only the calling thread, so a short-lived thread that joins the
namespace can run code there (write its /proc/sys/net files, probe a port) or open sockets
that stay bound to it after the thread ends. An rtnetlink socket opened that way is handed
to pyroute2's IPRoute(use_socket=...), instead of IPRoute(netns=...), whose forked helper
copies the parent's epoll instances and could leave a later call waiting forever.

A handle names its namespace by a path (a bind mount such as /run/netns/NAME, or
/proc/PID/ns/net), holds an open fd of it (Netns.hold, Netns.private), or is the current
namespace (Netns(None)). Which paths a caller uses is the caller's business.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import socket
import threading
import weakref
from typing import Any, Callable, Iterator, TypeVar

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 2
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_RCVBUF = 1 << 20
THREAD_NETNS = "/proc/thread-self/ns/net"

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)

__all__ = ["Netns", "CLONE_NEWNET"]


def _oserror(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def _setns_fd(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace of fd."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise _oserror(f"setns({what})")


def _unshare() -> None:
    """Give the calling thread a new, empty network namespace."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        raise _oserror("unshare(CLONE_NEWNET)")


def _on_thread(name: str, fn: Callable[[], T]) -> T:
    """fn() on a fresh thread (whose namespace changes die with it); its result or its error."""
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=runner, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# IPRoutes whose handle was collected while an asyncio loop ran on this thread (garbage
# collection can fire inside another IPRoute's run_until_complete). pyroute2's close() runs its
# own loop, which cannot start inside a running one: it would fail half-way, leaking its loop and
# socket and warning "shutdown_asyncgens was never awaited". They are closed at the next chance.
_deferred: list[Any] = []


def _close_rtnl(ipr: Any) -> None:
    """Close an IPRoute now, or defer it while an event loop runs on this thread."""
    if asyncio._get_running_loop() is not None:
        _deferred.append(ipr)
        return
    with contextlib.suppress(Exception):
        ipr.close()


def _close_deferred() -> None:
    """Close the IPRoutes deferred by _close_rtnl, unless a loop still runs here."""
    while _deferred and asyncio._get_running_loop() is None:
        _close_rtnl(_deferred.pop())


atexit.register(_close_deferred)


def _release(held: dict[str, Any]) -> None:
    """Close what a handle holds: its cached IPRoute, and its namespace fd (hold/private)."""
    ipr = held.pop("rtnl", None)
    if ipr is not None:
        _close_rtnl(ipr)
    _close_deferred()
    fd = held.pop("fd", -1)
    if fd >= 0:
        os.close(fd)


class Netns:
    """A network namespace: by path, by a held fd, or the current one (path None)."""

    def __init__(self, path: str | os.PathLike | None = None, *, name: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.name = name or (os.path.basename(self.path) if self.path else "current netns")
        self._held = False                # an fd is held (hold/private), else opened per use
        # What the handle holds ("fd", "rtnl": the cached IPRoute); released by close(), or
        # when the handle is collected.
        self._res: dict[str, Any] = {}
        weakref.finalize(self, _release, self._res)

    # -- making handles ---------------------------------------------------------------------

    @classmethod
    def hold(cls, path: str | os.PathLike, name: str | None = None) -> "Netns":
        """A handle keeping `path`'s namespace open (fast to join again; survives an unlink)."""
        ns = cls(path, name=name)
        ns._res["fd"] = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
        ns._held = True
        return ns

    @classmethod
    def private(cls, name: str = "private netns") -> "Netns":
        """A new, empty, unnamed namespace, alive while this handle is open."""
        def make() -> int:
            _unshare()
            return os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)

        ns = cls(None, name=name)
        ns._res["fd"] = _on_thread(f"netns-new-{name}", make)
        ns._held = True
        return ns

    @classmethod
    def create(cls, path: str | os.PathLike, name: str | None = None) -> "Netns":
        """A new namespace bound at `path` (what `ip netns add` does); the file must not exist."""
        ns = cls(path, name=name)
        os.close(os.open(ns.path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))

        def unshare_and_bind() -> None:
            _unshare()
            if _libc.mount(THREAD_NETNS.encode(), ns.path.encode(), b"none", MS_BIND, None) != 0:
                raise _oserror(f"bind-mounting the namespace on {ns.path}")

        try:
            _on_thread(f"netns-create-{ns.name}", unshare_and_bind)
        except BaseException:
            os.unlink(ns.path)
            raise
        return ns

    def remove(self) -> None:
        """Unmount and delete the bound path (`ip netns del`); the kernel frees the namespace
        with its last user. Also removes a plain file left by a half-finished create."""
        self.close()
        if self.path is None:
            raise ValueError(f"{self.name} has no path to remove")
        _libc.umount2(self.path.encode(), MNT_DETACH)  # EINVAL when nothing is mounted: fine
        os.unlink(self.path)

    # -- using them -------------------------------------------------------------------------

    def exists(self) -> bool:
        """True for the current namespace, a held one, or a path that is there."""
        return self.path is None or self._held or os.path.exists(self.path)

    @property
    def is_current(self) -> bool:
        return self.path is None and not self._held

    def open(self) -> int:
        """A new fd of the namespace (caller closes); FileNotFoundError when its path is gone."""
        if self._held:
            return os.dup(self._held_fd())
        return os.open(self.path or THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)

    def _held_fd(self) -> int:
        fd = self._res.get("fd", -1)
        if fd < 0:
            raise ValueError(f"{self.name} is closed")
        return fd

    def join(self) -> None:
        """Move the calling thread into the namespace (for good: see inside() and run())."""
        if self._held:
            _setns_fd(self._held_fd(), self.name)
            return
        fd = self.open()
        try:
            _setns_fd(fd, self.name)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The calling thread inside the namespace for the block, back where it was after."""
        home = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.join()
            try:
                yield
            finally:
                _setns_fd(home, "back to the original netns")
        finally:
            os.close(home)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on a thread that joined the namespace; its result or its error."""
        if self.is_current:
            return fn(*args, **kwargs)

        def inside() -> T:
            self.join()
            return fn(*args, **kwargs)

        return _on_thread(f"netns-{self.name}", inside)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A socket bound to the namespace (opened from inside it)."""
        return self.run(socket.socket, family, type, proto)

    def rtnl_socket(self) -> socket.socket:
        """A fresh rtnetlink socket of the namespace, for IPRoute(use_socket=...)."""
        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_RCVBUF)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # kernel error strings in replies
            return sock

        return self.run(open_socket)

    def rtnl(self) -> Any:
        """This handle's IPRoute over a socket opened inside the namespace (opened once, cached;
        close() drops it). groups=0: no multicast subscriptions, whose unread notifications
        would only fill the socket's buffer."""
        ipr = self._res.get("rtnl")
        if ipr is None:
            from pyroute2 import IPRoute

            _close_deferred()

            ipr = self._res["rtnl"] = IPRoute(use_socket=self.rtnl_socket(), groups=0)
        return ipr

    def close(self) -> None:
        """Close the cached IPRoute and a held fd; a handle by path can be used again."""
        _release(self._res)

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Netns({self.path!r})" if self.path or not self._held else f"Netns(<{self.name}>)"

    def __str__(self) -> str:
        return self.name
