"""Run code inside a named network namespace without forking: a short-lived thread setns()es into it.

setns(CLONE_NEWNET) changes only the calling thread, so a dedicated thread can write the
namespace's /proc/sys/net files or open sockets that stay bound to that namespace after the
thread ends. That is much cheaper than `ip netns exec sysctl ...` per setting.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from netns_lab import naming

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace bound at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(ns: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call fn(*args) in a thread that has joined namespace `ns`; return its result or re-raise its error."""
    box: dict[str, object] = {}

    def runner() -> None:
        try:
            _setns(str(naming.netns_path(ns)))
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=runner, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")  # type: ignore[return-value]


def _write_sysctls(settings: Mapping[str, str], optional: Iterable[str]) -> None:
    """Write /proc/sys/<key> = value for each setting, skipping absent optional keys.

    Keys are paths under /proc/sys with '/' separators ("net/ipv4/ip_forward"), so interface
    names containing dots stay unambiguous.
    """
    optional = set(optional)
    for key, value in settings.items():
        path = "/proc/sys/" + key
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except FileNotFoundError:
            if key not in optional:
                raise


def sysctl(ns: str, settings: Mapping[str, str], optional: Iterable[str] = ()) -> None:
    """Set sysctls inside namespace `ns` (per-namespace net.* keys); keys in `optional` may be absent."""
    in_netns(ns, _write_sysctls, dict(settings), list(optional))


def list_netns() -> list[str]:
    """Names of all named network namespaces (entries of /run/netns)."""
    try:
        return sorted(os.listdir(naming.NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_inode(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) identifying a network namespace file, or None if it is gone or not a namespace."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


MNT_DETACH = 2
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_RCVBUF = 1 << 20


def _mount(source: str, target: str, flags: int) -> int:
    """mount(2) without a file system type; returns errno (0 on success)."""
    if _libc.mount(source.encode(), target.encode(), b"none", flags, None) == 0:
        return 0
    return ctypes.get_errno()


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount (as `ip netns add` does) so namespace mounts propagate to other mount namespaces."""
    naming.NETNS_DIR.mkdir(parents=True, exist_ok=True)
    target = str(naming.NETNS_DIR)
    err = _mount("", target, MS_SHARED | MS_REC)
    if err == errno.EINVAL:  # not a mount point yet: bind it onto itself, then share it
        err = _mount(target, target, MS_BIND | MS_REC) or _mount("", target, MS_SHARED | MS_REC)
    if err:
        raise OSError(err, f"cannot make {target} a shared mount: {os.strerror(err)}")


def create_netns(name: str) -> None:
    """Create named network namespace `name` (/run/netns/<name>) without forking.

    A short-lived thread unshares its network namespace and bind-mounts it, the way `ip
    netns add` does. Not forking matters: pyroute2's fork-based helpers copy the parent's
    asyncio epoll instances into the child, and a later `up` could then wait forever for a
    netlink reply (seen about one run in ten).
    """
    _share_netns_dir()
    path = str(naming.netns_path(name))
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))

    def unshare_and_bind() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        err = _mount("/proc/thread-self/ns/net", path, MS_BIND)
        if err:
            raise OSError(err, f"bind-mounting the namespace on {path}: {os.strerror(err)}")

    box: dict[str, BaseException] = {}

    def runner() -> None:
        try:
            unshare_and_bind()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=runner, name=f"netns-create-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        os.unlink(path)
        raise box["error"]


def rtnl_socket(ns: str) -> socket.socket:
    """An rtnetlink socket bound to namespace `ns` (opened from a thread inside it), for IPRoute(use_socket=...)."""

    def open_socket() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_RCVBUF)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # kernel error strings in replies
        return sock

    return in_netns(ns, open_socket)


def remove_netns(name: str) -> None:
    """Unmount and delete a named namespace (what `ip netns del` does); the kernel frees it with its last user.

    Also removes a plain file left by a half-finished create (nothing mounted on it).
    """
    path = str(naming.netns_path(name))
    _libc.umount2(path.encode(), MNT_DETACH)  # EINVAL when nothing is mounted: fine
    os.unlink(path)

