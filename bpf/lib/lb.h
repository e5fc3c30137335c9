/* External frontends (LoadBalancer ingress, external IPs): source ranges,
 * ClientIP session affinity and Maglev, all decided on a conntrack miss
 * only (the established-flow path never comes here).
 *
 * - lb_svc holds a service's options, looked up only for frontends sync
 *   flagged FE_F_LB_OPTS, so plain services pay nothing.
 * - Source ranges (loadBalancerSourceRanges) apply to the LoadBalancer
 *   frontend (FE_F_LB_IP) as seen by from_hep: clients outside the cluster.
 * - Affinity: (frontend, client) -> backend and when it was last used; a
 *   hit younger than the service's timeout wins over any other choice.
 * - Maglev (Eisenbud et al., NSDI'16): a per-service table of MAGLEV_M
 *   slots filled by user space (ebpf_nodeport/maglev.py) from the backend
 *   set alone, so every node maps a flow's hash to the same backend. That
 *   is what lets a TCP connection whose packets start arriving at another
 *   node (the route to the LB address moved) be picked up mid-flow, as
 *   Calico does; other external frontends drop such a packet instead
 *   (their pick depends on the node, the connection could not go on).
 * - The frontend address travels with tunnelled packets of external
 *   frontends (VXH_F_FE_ADDR, in the inner Ethernet source the receiver
 *   strips anyway): the backend node needs it for a DSR reply, and to
 *   recognise a flow whose ingress node changed.
 */
#ifndef NP_LB_H
#define NP_LB_H

#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/nat.h"
#include "lib/policy.h"
#include "lib/tunnel.h"
#include "lib/counters.h"

/* Maglev lookup table size: a prime (Maglev needs one so every skip
 * visits every slot), well above 100x the backends a service is expected
 * to have, which keeps the per-backend share within ~1% of 1/N. */
#ifndef MAGLEV_M
#define MAGLEV_M 1021
#endif
#ifndef MAX_MAGLEV_ENTRIES
#define MAX_MAGLEV_ENTRIES (64 * MAGLEV_M)   /* 64 Maglev services */
#endif
#ifndef MAX_LB_SRC_RANGES
#define MAX_LB_SRC_RANGES 1024
#endif
#ifndef MAX_AFFINITY
#define MAX_AFFINITY 65536
#endif

#define LB_F_SRC_RANGES 1     /* the LoadBalancer frontend admits only lb_src's ranges */
#define LB_F_AFFINITY   2     /* sessionAffinity ClientIP */
#define LB_F_MAGLEV     4     /* external frontends pick through the maglev table */

#define VXH_F_FE_ADDR   0x02  /* the frontend address rides in the inner Ethernet source */
/* Offset of that address from the outer MAC header: outer Ethernet, then
 * encap_hdr up to the inner Ethernet header, then its destination MAC. */
#define LB_FE_TAG_OFF (ETH_HLEN + offsetof(struct encap_hdr, eth) + ETH_ALEN)

struct lb_svc {
	__u32 flags;          /* LB_F_* */
	__u32 affinity_s;     /* ClientIP affinity timeout in seconds */
};

/* Service options of external-traffic features: svc_id -> lb_svc. */
BPF_TABLE_PINNED("hash", __u32, struct lb_svc, lb_svc, MAX_SERVICES, PIN(lb_svc), BPF_F_NO_PREALLOC);

struct lb_src_key {
	__u32  prefixlen;     /* 32 (the service id) + the range's prefix length */
	__u32  svc_id;        /* big-endian in the trie: matched whole, before the address */
	__be32 addr;
};

/* loadBalancerSourceRanges: (service, client CIDR), longest prefix match. */
BPF_TABLE_PINNED("lpm_trie", struct lb_src_key, __u32, lb_src, MAX_LB_SRC_RANGES, PIN(lb_src), BPF_F_NO_PREALLOC);

struct affinity_key {
	__be32 fe_addr;
	__be16 fe_port;
	__u8   proto;
	__u8   pad;
	__be32 client;
};

struct affinity_value {
	__u64  last_ns;       /* CLOCK_MONOTONIC of the last new connection it chose */
	__be32 be_addr;
	__be16 be_port;
	__u16  pad;
};

/* ClientIP affinity: (frontend, client) -> backend, valid for lb_svc.affinity_s. */
BPF_TABLE_PINNED("lru_hash", struct affinity_key, struct affinity_value, affinity, MAX_AFFINITY, PIN(affinity));

struct maglev_key {
	__u32 svc_id;
	__u32 slot;           /* 0..MAGLEV_M-1 */
};

/* Maglev lookup tables: (service, slot) -> backend, the same on every node. */
BPF_TABLE_PINNED("hash", struct maglev_key, struct be_value, maglev, MAX_MAGLEV_ENTRIES,
		 PIN(maglev), BPF_F_NO_PREALLOC);

/* A TCP segment without SYN: part of a connection this node never saw open. */
static __always_inline int tcp_mid_flow(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && !(p->tcp_flags & TCPF_SYN);
}

static __always_inline int lb_src_allowed(__u32 svc_id, __be32 client)
{
	struct lb_src_key k = { .prefixlen = 64, .svc_id = bpf_htonl(svc_id), .addr = client };

	return lb_src.lookup(&k) != NULL;
}

/* Backend for a new (to this node) flow from outside to frontend fe; NULL
 * with *reason set when it must be dropped (REASON_DROP_NO_BACKEND: refused
 * with ICMP by the caller). Plain frontends go straight to the traffic
 * policy's pick (lib/policy.h). */
static __always_inline struct be_value *lb_pick(const struct fe_value *fe, struct pkt *p,
						__u32 hash, __u8 *reason)
{
	struct affinity_key ak = {};
	struct affinity_value av, *a;
	struct maglev_key mk;
	struct lb_svc *svc = NULL;
	struct be_value *be;
	__u64 now = 0;

	*reason = REASON_DROP_NO_BACKEND;
	if (!(fe->flags & (FE_F_LB_OPTS | FE_F_EXTERNAL)))
		return be_pick_policy(fe, hash, TRAFFIC_EXTERNAL);
	if (fe->flags & FE_F_LB_OPTS)
		svc = lb_svc.lookup(&fe->svc_id);
	if (svc && (svc->flags & LB_F_SRC_RANGES) && (fe->flags & FE_F_LB_IP) &&
	    !lb_src_allowed(fe->svc_id, p->saddr)) {
		*reason = REASON_DROP_SRC_RANGE;
		return NULL;
	}
	if (svc && (svc->flags & LB_F_AFFINITY)) {
		__builtin_memset(&ak, 0, sizeof(ak));
		ak.fe_addr = p->daddr;
		ak.fe_port = p->dport;
		ak.proto = p->proto;
		ak.client = p->saddr;
		now = pkt_now(p);
		a = affinity.lookup(&ak);
		if (a && now >= a->last_ns && now - a->last_ns < (__u64)svc->affinity_s * 1000000000ULL) {
			a->last_ns = now;
			return (struct be_value *)&a->be_addr;
		}
	}
	if (svc && (svc->flags & LB_F_MAGLEV) && (fe->flags & FE_F_EXTERNAL)) {
		mk.svc_id = fe->svc_id;
		mk.slot = hash % MAGLEV_M;
		be = maglev.lookup(&mk);
	} else if ((fe->flags & FE_F_EXTERNAL) && tcp_mid_flow(p)) {
		*reason = REASON_DROP_MID_FLOW;
		return NULL;
	} else {
		be = be_pick_policy(fe, hash, TRAFFIC_EXTERNAL);
	}
	if (be && svc && (svc->flags & LB_F_AFFINITY)) {
		av.last_ns = now;
		av.be_addr = be->addr;
		av.be_port = be->port;
		av.pad = 0;
		affinity.update(&ak, &av);
	}
	return be;
}

/* After tunnel_encap: tag the packet with its external frontend address. */
static __always_inline int lb_tag_frontend(struct __sk_buff *skb, __be32 fe_addr)
{
	return bpf_skb_store_bytes(skb, LB_FE_TAG_OFF, &fe_addr, sizeof(fe_addr), 0);
}

/* Backend node: the frontend a tunnelled request was sent to: the tagged
 * external address, else the ingress node itself (a NodePort). */
static __always_inline __be32 lb_frontend_of(struct __sk_buff *skb, const struct vxlan_np *vx,
					     __be32 peer)
{
	__be32 fe_addr;

	if (!(vx->np_flags & VXH_F_FE_ADDR) ||
	    bpf_skb_load_bytes(skb, LB_FE_TAG_OFF, &fe_addr, sizeof(fe_addr)) < 0)
		return peer;
	return fe_addr;
}

/* Is v (looked up with the client's packet) the connection of that client
 * port to external frontend fe_addr:fe_port as a backend node holds it:
 * tunnelled to us by an ingress node (CT_NORMAL), or opened by the client
 * through us with a backend of ours (a local NAT_REV)? The client's 4-tuple
 * toward the frontend is one connection whichever node it enters by. */
static __always_inline int lb_flow_is(const struct ct_value *v, __u8 type, __be32 fe_addr,
				      __be16 fe_port, int from_a)
{
	if (type == CT_NORMAL && !(v->flags & CT_F_FROM_TUNNEL))
		return 0;
	if (type == CT_NAT_REV && (v->flags & (CT_F_POD_CLIENT | CT_F_TUNNEL)))
		return 0;
	return v->type == type && v->nat_addr == fe_addr && v->nat_port == fe_port && !v->cl_port &&
	       ct_from_client(v, from_a);
}

/* Backend node: v (the packet's own entry, from the client's side) is this
 * external-frontend flow as another ingress node tunnelled it: the route
 * to the frontend moved. The flow goes on through peer (Calico updates the
 * tunnel source of its conntrack entry the same way). If we were its
 * ingress node ourselves (the route moved away from us, or a request
 * tunnelled before it moved to us arrives late), it is delivered as it
 * is: the replies keep leaving from here, reverse-NATed by our entry. */
static __always_inline int lb_ingress_moved(struct ct_value *v, __be32 peer, __be32 fe_addr,
					    __be16 fe_port, int from_a)
{
	if (!v || fe_addr == peer)
		return 0;
	if (lb_flow_is(v, CT_NAT_REV, fe_addr, fe_port, from_a))
		return 1;
	if (!lb_flow_is(v, CT_NORMAL, fe_addr, fe_port, from_a))
		return 0;
	v->tun_peer = peer;
	return 1;
}

/* Ingress node with the picked backend: held, the live entry under the
 * (client, backend) key the new flow needs, is this very connection as
 * another ingress node tunnelled it to us before the route to the frontend
 * moved here (a mid-flow Maglev pick lands on the same backend). We become
 * its ingress node: the entry turns into our local NAT_REV, keeping its TCP
 * state and counters, so the pod sees the same 4-tuple and its replies are
 * reverse-NATed here. Any other holder is a different connection (PSNAT). */
static __always_inline int lb_take_over(struct __sk_buff *skb, struct pkt *p, struct ct_value *held,
					__u8 flags, int from_a)
{
	if (!lb_flow_is(held, CT_NORMAL, p->daddr, p->dport, from_a))
		return 0;
	held->type = CT_NAT_REV;
	held->flags = flags | (held->flags & CT_F_CLIENT_IS_B);
	held->tun_peer = 0;
	ct_account(skb, held, from_a, p);
	return 1;
}

#endif /* NP_LB_H */
