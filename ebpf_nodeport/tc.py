"""Attach pinned programs as TC clsact direct-action filters, inside a network namespace.

The program fd comes from its pin (no compile), so any process can attach or
detach. One filter per (interface, direction) at a fixed priority/handle:
attaching again replaces it atomically (no window without a program). Netlink goes
through the namespace handle's own rtnetlink socket (Netns.rtnl: opened inside the
namespace by a thread, cached on the handle), never a forked pyroute2 helper.
pyroute2 is imported by the functions that talk netlink: importing it costs about a third of
the CLI's start-up, and most commands never attach anything.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import libbpf
from .netns import Netns

if TYPE_CHECKING:
    from pyroute2 import IPRoute

INGRESS = "ingress"
EGRESS = "egress"
_PARENT = {INGRESS: 0xFFFFFFF2, EGRESS: 0xFFFFFFF3}   # clsact's ffff:fff2 / ffff:fff3
FILTER_PRIO = 1
FILTER_HANDLE = 1
ETH_P_ALL = 0x0003

__all__ = ["INGRESS", "EGRESS", "TcError", "AttachedFilter", "attach", "detach", "filters",
           "ifindex", "link_mtu", "links", "remove_clsact"]


class TcError(RuntimeError):
    """An attach/detach step failed; the message names the namespace and interface."""


@dataclass(frozen=True)
class AttachedFilter:
    """A bpf filter found on an interface."""
    ifname: str
    direction: str
    name: str        # program name as given at attach (the entry name)
    prio: int
    handle: int


def _ipr(netns: Netns) -> IPRoute:
    """The handle's cached IPRoute; FileNotFoundError when its namespace is gone."""
    return netns.rtnl()


def _where(netns: Netns, ifname: str) -> str:
    return f"{netns}/{ifname}"


def _index(ipr: IPRoute, netns: Netns, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TcError(f"no interface {_where(netns, ifname)}")
    return found[0]


def ifindex(netns: Netns, ifname: str) -> int:
    """Interface index of ifname inside netns."""
    ipr = _ipr(netns)
    return _index(ipr, netns, ifname)


def link_mtu(netns: Netns, ifname: str) -> int:
    ipr = _ipr(netns)
    idx = _index(ipr, netns, ifname)
    return int(ipr.get_links(idx)[0].get_attr("IFLA_MTU"))


def links(netns: Netns) -> list[str]:
    """Names of all interfaces in netns."""
    ipr = _ipr(netns)
    return [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()]


def _check_dir(direction: str) -> int:
    try:
        return _PARENT[direction]
    except KeyError:
        raise TcError(f"direction must be {INGRESS!r} or {EGRESS!r}, not {direction!r}") from None


def attach(netns: Netns, ifname: str, direction: str, prog_path: str, name: str) -> None:
    """Attach (or replace) the pinned program at prog_path on ifname's clsact hook."""
    from pyroute2.netlink.exceptions import NetlinkError

    parent = _check_dir(direction)
    fd = libbpf.obj_get(prog_path)
    try:
        ipr = _ipr(netns)
        idx = _index(ipr, netns, ifname)
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise TcError(f"clsact on {_where(netns, ifname)}: {exc}") from exc
        try:
            ipr.tc("replace-filter", "bpf", idx, FILTER_HANDLE, fd=fd, name=name,
                   parent=parent, classid=1, direct_action=True, prio=FILTER_PRIO,
                   protocol=ETH_P_ALL)
        except NetlinkError as exc:
            raise TcError(f"attach {name} {direction} on {_where(netns, ifname)}: {exc}") from exc
    finally:
        os.close(fd)


def detach(netns: Netns, ifname: str, direction: str, name: str | None = None) -> bool:
    """Remove our filter from ifname's hook; False when there was none (or no interface).

    With `name`, only a filter carrying that program name is removed, so a
    filter someone else put at our priority is never touched.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    parent = _check_dir(direction)
    if name is not None:
        try:
            present = filters(netns, ifname)
        except FileNotFoundError:
            return False
        if not any(f.direction == direction and f.name == name and f.prio == FILTER_PRIO
                   for f in present):
            return False
    try:
        ipr = _ipr(netns)
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        try:
            ipr.tc("del-filter", "bpf", found[0], FILTER_HANDLE, parent=parent,
                   prio=FILTER_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                return False
            raise TcError(f"detach {direction} on {_where(netns, ifname)}: {exc}") from exc
        return True
    except FileNotFoundError:   # the namespace is gone: nothing attached anymore
        return False


def filters(netns: Netns, ifname: str) -> list[AttachedFilter]:
    """bpf filters on ifname's clsact hooks (empty when none or no clsact)."""
    from pyroute2.netlink.exceptions import NetlinkError

    out: list[AttachedFilter] = []
    ipr = _ipr(netns)
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return out
    for direction, parent in _PARENT.items():
        try:
            msgs = ipr.get_filters(index=found[0], parent=parent)
        except NetlinkError:
            continue
        for m in msgs:
            if m.get_attr("TCA_KIND") != "bpf":
                continue
            opts = m.get_attr("TCA_OPTIONS")
            name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
            if name is None:
                continue    # the chain head message carries no program
            out.append(AttachedFilter(ifname, direction, name, m["info"] >> 16, m["handle"]))
    return out


def remove_clsact(netns: Netns, ifname: str) -> bool:
    """Delete the clsact qdisc (and every filter on it); False when absent."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr = _ipr(netns)
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        try:
            ipr.tc("del", "clsact", found[0])
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL):
                return False
            raise TcError(f"remove clsact on {_where(netns, ifname)}: {exc}") from exc
        return True
    except FileNotFoundError:
        return False
