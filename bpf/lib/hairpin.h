/* Hairpin: a pod reaches a service and is given itself as the backend.
 *
 * Delivered as it is, the packet would reach the pod from its own address,
 * which its stack drops (a local source arriving on eth0), and the node
 * would drop it first as a martian. Calico flags such a flow (SVC_SELF) and
 * lets iptables MASQUERADE it to the host's address, as kube-proxy does;
 * nothing masquerades here, so the program does that SNAT itself: the pod
 * sees (node address:its port) -> (itself:target port) and answers the node.
 * The NAT_REV entry is keyed by that post-SNAT pair; the client's own address
 * is the backend's (the reply's source), so nothing more is stored, and
 * POD_CLIENT with the node's address as client tells the entry apart from
 * the node's own connections (lib/hostnat.h). Both directions go back out
 * of the veth they came in on (bpf_redirect to its egress): the kernel
 * would route neither (a martian source, and a local destination).
 */
#ifndef NP_HAIRPIN_H
#define NP_HAIRPIN_H

#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/events.h"

static __always_inline int hairpin_is(const struct pkt *p, __be32 be_addr)
{
	return be_addr == p->saddr;
}

/* Back out of the veth the frame came in on: to the pod, so it is addressed
 * to the pod's MAC (it was sent to the veth's), else the pod ignores it. */
static __always_inline int hairpin_back(struct __sk_buff *skb)
{
	struct ethhdr *eth = pkt_ptr(skb, 0, ETH_HLEN);
	__u8 mac[ETH_ALEN];

	if (!eth)
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return bpf_redirect(skb->ifindex, 0);
}

/* The request, already DNATed to the pod itself: source -> the node. */
static __always_inline int hairpin_request_out(struct __sk_buff *skb, const struct node_cfg *conf,
					       struct pkt *p, struct run_state *st, __u8 reason)
{
	if (rewrite_l3l4(skb, p, 1, conf->node_ip, p->sport) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	return verdict(st, reason, hairpin_back(skb));
}

/* First packet: entries, DNAT to the pod, SNAT to the node. */
static __always_inline int hairpin_new(struct __sk_buff *skb, const struct node_cfg *conf,
				       struct pkt *p, struct run_state *st, __be32 be_addr,
				       __be16 be_port, __u8 flags)
{
	struct ct_new fwd, rev;
	struct ct_value v;
	struct ct_key k;
	int from_a;

	flags |= CT_F_POD_CLIENT;
	fwd = (struct ct_new){ .type = CT_NAT_FWD, .flags = flags, .sport = p->sport, .daddr = p->daddr,
			       .dport = p->dport, .nat_addr = be_addr, .nat_port = be_port };
	rev = (struct ct_new){ .type = CT_NAT_REV, .flags = flags, .sport = p->sport, .daddr = be_addr,
			       .dport = be_port, .nat_addr = p->daddr, .nat_port = p->dport };
	if (ct_create(skb, p, &fwd, CT_REPLACE) < 0)
		return verdict(st, REASON_DROP_CT_FULL, TC_ACT_SHOT);
	/* keyed by the post-SNAT client (the node), not p's source */
	ct_key_make(&k, conf->node_ip, rev.sport, rev.daddr, rev.dport, p->proto, &from_a);
	ct_fill(&v, skb, p, from_a, &rev);
	if (ct.update(&k, &v) < 0) {
		ct_uncreate(p, &fwd, p->sport);   /* both entries or none */
		return verdict(st, REASON_DROP_CT_FULL, TC_ACT_SHOT);
	}
	st->ct_flags = flags;
	if (rewrite_l3l4(skb, p, 0, be_addr, be_port) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	return hairpin_request_out(skb, conf, p, st, REASON_NAT_NEW);
}

/* The pod answers its own hairpin connection (to the node's address):
 * source back to the frontend, destination back to the pod. -1 when p is
 * not that. */
static __always_inline int hairpin_reply(struct __sk_buff *skb, const struct node_cfg *conf,
					 struct pkt *p, struct run_state *st,
					 struct ct_value *v, int from_a)
{
	__be32 fe_addr, pod = p->saddr;
	__be16 fe_port;

	if (v->type != CT_NAT_REV || !(v->flags & CT_F_POD_CLIENT) || p->daddr != conf->node_ip ||
	    ct_from_client(v, from_a))
		return -1;
	fe_addr = v->nat_addr;
	fe_port = v->nat_port;
	st->ct_flags = v->flags;
	ct_account(skb, v, from_a, p);
	if (rewrite_l3l4(skb, p, 1, fe_addr, fe_port) < 0 ||
	    rewrite_l3l4(skb, p, 0, pod, p->dport) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	return verdict(st, REASON_REV_NAT, hairpin_back(skb));
}

#endif /* NP_HAIRPIN_H */
