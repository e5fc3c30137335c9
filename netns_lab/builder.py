"""Builder: turns a Topology into network namespaces, veths, addresses, routes and sysctls (pyroute2).

Layout (docs/conventions.md): a fabric namespace with bridge br0; every node and host has
`eth0` whose peer, named after the member, is a port of br0; every pod has `eth0` (MTU =
fabric - 50) whose peer `cali<11 hex>` sits on its node, Calico style: the pod's default
route goes via 169.254.1.1 (onlink) and the node answers for it by proxy ARP; the node
routes the pod's /32 to the cali interface and other nodes' /26 blocks via those nodes.

Veths are always created inside a lab namespace with the peer placed straight into another
(IFLA_NET_NS_FD), so no lab interface ever exists in the root namespace, and the root
namespace gets no route to 198.19/16. One IPRoute socket per namespace is opened and reused.
Nothing here forks: namespaces and their netlink sockets are made by short-lived threads
(nsexec.py), because pyroute2's fork-based netns helpers can hang a build.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from netns_lab import loadbalancer, naming
from netns_lab.errors import LabError
from netns_lab.nsexec import create_netns, list_netns, remove_netns, rtnl_socket, sysctl
from netns_lab.topology import AddressPlan, Pod, Topology

if TYPE_CHECKING:    # pyroute2 itself is imported where a lab is built: it is a third of the CLI's start-up
    from pyroute2 import IPRoute

RTNH_F_ONLINK = 4
SCOPE_LINK = 253

Progress = Callable[[str], None]
IPV6_OFF = ("net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6")


def namespaces(lab: str, topo: Topology) -> list[str]:
    """Every namespace the lab consists of, fabric first."""
    return [naming.netns(lab, naming.FABRIC)] + [naming.netns(lab, m) for m in topo.member_names()]


class Builder:
    """Builds one lab; keeps one IPRoute per namespace for the whole build."""

    def __init__(self, lab: str, topo: Topology, plan: AddressPlan):
        self.lab = lab
        self.topo = topo
        self.plan = plan
        self._ipr: dict[str, IPRoute] = {}

    # -- helpers

    def ns(self, member: str) -> str:
        """Namespace name of a member (or of the fabric)."""
        return naming.netns(self.lab, member)

    def ipr(self, member: str) -> IPRoute:
        """The (cached) rtnetlink socket bound to a member's namespace."""
        if member not in self._ipr:
            from pyroute2 import IPRoute

            # The socket is opened by a thread inside the namespace and handed over, instead of
            # IPRoute(netns=...), which forks a helper per socket (see nsexec.create_netns).
            # groups=0: no multicast subscriptions; we never read notifications, and unread ones
            # would only fill the socket's buffer.
            self._ipr[member] = IPRoute(use_socket=rtnl_socket(self.ns(member)), groups=0)
        return self._ipr[member]

    def index(self, member: str, ifname: str) -> int:
        """Interface index of `ifname` in a member's namespace."""
        found = self.ipr(member).link_lookup(ifname=ifname)
        if not found:
            raise LabError(f"interface {ifname} missing in {self.ns(member)}")
        return found[0]

    def close(self) -> None:
        """Close every rtnetlink socket."""
        for ipr in self._ipr.values():
            with contextlib.suppress(Exception):
                ipr.close()
        self._ipr.clear()

    # -- steps

    def build(self, progress: Progress = lambda msg: None) -> dict[str, str]:
        """Build everything; returns {pod: node-side interface name}. Raises LabError/OSError on failure."""
        try:
            t0 = time.monotonic()
            self.create_namespaces()
            self.fabric()
            self.uplinks()
            cali = self.pods()
            self.node_routes()
            self.host_routes()
            self.node_sysctls(cali)
            progress(f"namespaces, veths, addresses and routes ({time.monotonic() - t0:.2f}s)")
            return cali
        finally:
            self.close()

    def create_namespaces(self) -> None:
        """Create every namespace, bring lo up and switch IPv6 off (the lab is IPv4 only; no RS/DAD noise)."""
        existing = set(list_netns())
        for name in namespaces(self.lab, self.topo):
            if name in existing:
                raise LabError(f"namespace {name} already exists (run: netns-lab down --name {self.lab})")
        for member in [naming.FABRIC] + self.topo.member_names():
            create_netns(self.ns(member))
            optional = list(IPV6_OFF)
            settings = {key: "1" for key in optional}
            if member == naming.FABRIC:
                # the fabric is a plain switch: bridged frames must not traverse its (empty) iptables
                for table in ("iptables", "ip6tables", "arptables"):
                    key = f"net/bridge/bridge-nf-call-{table}"
                    settings[key] = "0"
                    optional.append(key)
            sysctl(self.ns(member), settings, optional=optional)
            ipr = self.ipr(member)
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def fabric(self) -> None:
        """The switch: bridge br0 in the fabric namespace."""
        ipr = self.ipr(naming.FABRIC)
        ipr.link("add", ifname=naming.BRIDGE, kind="bridge")
        ipr.link("set", index=self.index(naming.FABRIC, naming.BRIDGE), mtu=self.topo.fabric.mtu, state="up")

    def uplinks(self) -> None:
        """eth0 of each node and host, its peer (named after the member) plugged into br0."""
        fab = self.ipr(naming.FABRIC)
        br = self.index(naming.FABRIC, naming.BRIDGE)
        prefix = int(self.topo.fabric.subnet.split("/")[1])
        mtu = self.topo.fabric.mtu
        for m in list(self.topo.nodes) + list(self.topo.hosts):
            ipr = self.ipr(m.name)
            ipr.link(
                "add",
                ifname=naming.UPLINK,
                kind="veth",
                peer={"ifname": m.name, "net_ns_fd": self.ns(naming.FABRIC)},
            )
            eth0 = self.index(m.name, naming.UPLINK)
            ipr.link("set", index=eth0, mtu=mtu)
            ipr.addr("add", index=eth0, address=m.address, prefixlen=prefix)
            ipr.link("set", index=eth0, state="up")
            port = self.index(naming.FABRIC, m.name)
            fab.link("set", index=port, master=br, mtu=mtu, state="up")

    def pods(self) -> dict[str, str]:
        """Each pod's eth0 (/32, default via 169.254.1.1 onlink) and its cali peer on the node."""
        return {pod.name: self.pod(pod, str(self.plan.pod_ips[pod.name])) for pod in self.topo.pods}

    def pod(self, pod: Pod, ip: str) -> str:
        """One pod's veth pair, address, default route and the node's /32 route to it; returns the cali name."""
        ifname = naming.cali_ifname(self.lab, pod.name)
        mtu = self.topo.pod_mtu
        ipr = self.ipr(pod.name)
        ipr.link(
            "add",
            ifname=naming.POD_IFNAME,
            kind="veth",
            peer={"ifname": ifname, "net_ns_fd": self.ns(pod.node)},
        )
        eth0 = self.index(pod.name, naming.POD_IFNAME)
        ipr.link("set", index=eth0, mtu=mtu)
        ipr.addr("add", index=eth0, address=ip, prefixlen=32)
        ipr.link("set", index=eth0, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=naming.POD_GATEWAY, oif=eth0, flags=RTNH_F_ONLINK)
        node = self.ipr(pod.node)
        idx = self.index(pod.node, ifname)
        node.link("set", index=idx, mtu=mtu, state="up")
        node.route("add", dst=f"{ip}/32", oif=idx, scope=SCOPE_LINK)
        return ifname

    def node_routes(self) -> None:
        """Per node: other nodes' pod blocks via their addresses, own block blackholed, a default route.

        The default route out of eth0 stands in for a real node's uplink route; proxy ARP only
        answers for 169.254.1.1 when the node has a route to it through another interface.
        The blackhole is what Calico installs for a node's own block: unknown pod addresses
        in it are dropped here instead of leaking to the fabric.
        """
        for node in self.topo.nodes:
            ipr = self.ipr(node.name)
            eth0 = self.index(node.name, naming.UPLINK)
            for other in self.topo.nodes:
                block = str(self.plan.node_blocks[other.name])
                if other.name == node.name:
                    ipr.route("add", dst=block, type="blackhole")
                else:
                    ipr.route("add", dst=block, gateway=other.address, oif=eth0)
            ipr.route("add", dst="0.0.0.0/0", oif=eth0, scope=SCOPE_LINK)

    def host_routes(self) -> None:
        """Per host: the LoadBalancer pool via one node or ECMP over all (topology loadBalancerRoute)."""
        via = loadbalancer.route_via(self.topo)
        dst = str(loadbalancer.pool(self.topo))
        for host in self.topo.hosts:
            ipr = self.ipr(host.name)
            eth0 = self.index(host.name, naming.UPLINK)
            if len(via) == 1:
                ipr.route("add", dst=dst, gateway=via[0], oif=eth0)
            else:
                ipr.route("add", dst=dst, multipath=[{"gateway": a, "oif": eth0} for a in via])

    def node_sysctls(self, cali: dict[str, str]) -> None:
        """Forwarding on nodes; ARP hygiene on eth0; proxy ARP (no delay) on each cali interface.

        arp_ignore=1/arp_announce=2: a node that later holds another node's address (NodePort
        tricks) must neither answer ARP for it nor use it as an ARP source.
        """
        for node in self.topo.nodes:
            settings = {
                "net/ipv4/ip_forward": "1",
                f"net/ipv4/conf/{naming.UPLINK}/arp_ignore": "1",
                f"net/ipv4/conf/{naming.UPLINK}/arp_announce": "2",
            }
            for pod in self.topo.pods:
                if pod.node == node.name:
                    settings.update(cali_sysctls(cali[pod.name]))
            sysctl(self.ns(node.name), settings)

    def recreate_pod(self, pod: Pod, ip: str) -> str:
        """Build one pod again (after remove_pod): namespace, veth pair, address, routes, proxy ARP; returns the cali name."""
        name = self.ns(pod.name)
        if name in set(list_netns()):
            raise LabError(f"namespace {name} already exists")
        create_netns(name)
        sysctl(name, {k: "1" for k in IPV6_OFF}, optional=IPV6_OFF)
        ipr = self.ipr(pod.name)
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ifname = self.pod(pod, ip)
        sysctl(self.ns(pod.node), cali_sysctls(ifname))
        return ifname


def cali_sysctls(ifname: str) -> dict[str, str]:
    """Node-side settings of a pod veth: proxy ARP for 169.254.1.1, answered at once."""
    return {f"net/ipv4/conf/{ifname}/proxy_arp": "1", f"net/ipv4/neigh/{ifname}/proxy_delay": "0"}


def build(lab: str, topo: Topology, plan: AddressPlan, progress: Progress = lambda msg: None) -> dict[str, str]:
    """Build the lab's namespaces; returns {pod: cali interface}."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return Builder(lab, topo, plan).build(progress)
    except NetlinkError as exc:
        raise LabError(f"netlink error while building lab {lab!r}: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise LabError("permission denied while building namespaces: run as root") from None
        raise


def recreate_pod(lab: str, topo: Topology, plan: AddressPlan, pod: Pod, ip: str) -> str:
    """Build one pod again (namespace, veth, address, routes) with address `ip`; returns its cali interface."""
    from pyroute2.netlink.exceptions import NetlinkError

    b = Builder(lab, topo, plan)
    try:
        return b.recreate_pod(pod, ip)
    except NetlinkError as exc:
        raise LabError(f"netlink error while recreating pod {pod.name}: {exc}") from None
    finally:
        b.close()


def remove_pod(lab: str, pod: Pod) -> None:
    """Delete a pod's veth pair (from the node side: synchronous, unlike a namespace's teardown) and its namespace."""
    from pyroute2 import IPRoute

    cali = naming.cali_ifname(lab, pod.name)
    with contextlib.closing(IPRoute(use_socket=rtnl_socket(naming.netns(lab, pod.node)), groups=0)) as ipr:
        idx = ipr.link_lookup(ifname=cali)
        if idx:
            ipr.link("del", index=idx[0])  # takes the pod's eth0 and the node's /32 route with it
    name = naming.netns(lab, pod.name)
    if name in set(list_netns()):
        remove_netns(name)
