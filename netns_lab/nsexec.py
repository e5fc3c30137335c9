"""Lab namespaces by name: run code, set sysctls, create and remove them, open rtnetlink sockets.

Everything goes through ebpf_nodeport.netns.Netns (a thread that setns()es, no fork); this
module only maps a lab's namespace names to their /run/netns paths and keeps /run/netns shared.
A thread per call is much cheaper than `ip netns exec sysctl ...` per setting.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from ebpf_nodeport.netns import Netns
from netns_lab import naming

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_handle(ns: str) -> Netns:
    """The handle of named namespace `ns` (/run/netns/<ns>)."""
    return Netns(naming.netns_path(ns))


def in_netns(ns: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call fn(*args) in a thread that has joined namespace `ns`; return its result or re-raise its error."""
    return netns_handle(ns).run(fn, *args, **kwargs)


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


MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20


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
    """Create named network namespace `name` (/run/netns/<name>) without forking (Netns.create).

    Not forking matters: pyroute2's fork-based helpers copy the parent's asyncio epoll
    instances into the child, and a later `up` could then wait forever for a netlink reply
    (seen about one run in ten).
    """
    _share_netns_dir()
    Netns.create(naming.netns_path(name))


def rtnl_socket(ns: str) -> socket.socket:
    """An rtnetlink socket bound to namespace `ns` (opened from a thread inside it), for IPRoute(use_socket=...)."""
    return netns_handle(ns).rtnl_socket()


def remove_netns(name: str) -> None:
    """Unmount and delete a named namespace (what `ip netns del` does); the kernel frees it with its last user.

    Also removes a plain file left by a half-finished create (nothing mounted on it).
    """
    netns_handle(name).remove()
