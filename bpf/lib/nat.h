/* Service NAT: frontend lookup, backend choice, pod-block routing. */
#ifndef NP_NAT_H
#define NP_NAT_H

#include "lib/maps.h"
#include "lib/parse.h"

/* 32-bit finaliser (Wang/Murmur style): cheap, and good enough to spread
 * source ports over backends and tunnel source ports. Mirrored in
 * ebpf_nodeport/abi.py (flow_hash) so tests can predict choices. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

/* Hash of a 5-tuple, all fields taken as host-order numbers. Deterministic
 * (not random as kube-proxy's statistic match) so that a test can predict
 * which backend a given client port lands on. */
static __always_inline __u32 flow_hash(__be32 saddr, __be16 sport, __be32 daddr,
				       __be16 dport, __u8 proto)
{
	__u32 ports = ((__u32)bpf_ntohs(sport) << 16) | bpf_ntohs(dport);

	return mix32(bpf_ntohl(saddr) ^ mix32(bpf_ntohl(daddr) ^ mix32(ports ^ proto)));
}

/* Frontend for (daddr, dport, proto): the exact entry first (ClusterIP, or a
 * NodePort on one address), then the NodePort wildcard when the caller says
 * daddr is an address NodePorts are served on. Address 0 in nat_fe means
 * "any node address", so the exact lookup of 0.0.0.0 would *be* the wildcard
 * lookup without the nodeport_ok check; and 0.0.0.0 is no address anything
 * is served on (it only means "this host" as a source), so it has no
 * frontend at all: a DNAT from it would leave replies sourced from 0.0.0.0. */
static __always_inline struct fe_value *fe_lookup(const struct pkt *p, int nodeport_ok)
{
	struct fe_key k;
	struct fe_value *fe;

	if (!p->daddr)
		return NULL;
	__builtin_memset(&k, 0, sizeof(k));
	k.addr = p->daddr;
	k.port = p->dport;
	k.proto = p->proto;
	fe = nat_fe.lookup(&k);
	if (fe || !nodeport_ok)
		return fe;
	k.addr = 0;
	fe = nat_fe.lookup(&k);
	if (fe && !(fe->flags & FE_F_NODEPORT))
		return NULL;
	return fe;
}

static __always_inline struct route_info *route_lookup(__be32 addr)
{
	struct route_key k = { .prefixlen = 32, .addr = addr };

	return routes.lookup(&k);
}

static __always_inline int is_node(__be32 addr)
{
	return nodes.lookup(&addr) != NULL;
}

/* Node hosting addr when that is another node, else 0 (local or unknown:
 * the kernel's own routing handles it). A backend outside the pod blocks
 * that is another node's address (a host-network endpoint) is that node's:
 * tunnelled there like a pod, so its reply comes back through the tunnel
 * (to_hep on that node) instead of straight from its own address. */
static __always_inline __be32 remote_node_of(const struct node_cfg *conf, __be32 addr)
{
	struct route_info *rt = route_lookup(addr);

	if (!rt)
		return addr != conf->node_ip && is_node(addr) ? addr : 0;
	if ((rt->flags & RT_F_LOCAL) || rt->node_ip == conf->node_ip)
		return 0;
	return rt->node_ip;
}

static __always_inline int is_local_pod(__be32 addr)
{
	struct route_info *rt = route_lookup(addr);

	return rt && (rt->flags & RT_F_LOCAL);
}


/* DSR only for clients outside the cluster that were not opted out. */
static __always_inline int dsr_allowed(const struct node_cfg *conf, __be32 client)
{
	struct route_key k = { .prefixlen = 32, .addr = client };

	if (!(conf->flags & CFG_F_DSR))
		return 0;
	if (is_node(client) || route_lookup(client))
		return 0;
	return dsr_optout.lookup(&k) == NULL;
}

static __always_inline __u8 ct_flags_of_fe(const struct fe_value *fe)
{
	return (fe->flags & FE_F_NODEPORT) ? CT_F_NODEPORT : CT_F_CLUSTERIP;
}

#endif /* NP_NAT_H */
