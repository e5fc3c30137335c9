/* to_wep: pod veth egress, i.e. packets delivered to the pod.
 *
 * The reply of a connection this pod opened to a service (ClusterIP, or a
 * NodePort from inside) gets its source back to the frontend the pod
 * connected to. Done here, at the client, because that is the one place
 * every such reply passes, whichever node the backend is on. ICMP errors
 * about the pod's connection get the same treatment, quote included.
 */
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/icmp.h"
#include "lib/events.h"

/* An ICMP error from a pod client's backend side about the client's own
 * packet (e.g. port unreachable from a ClusterIP backend): source and quote
 * back to the frontend the pod talked to. */
static __always_inline int twep_icmp(struct __sk_buff *skb, struct pkt *p, struct run_state *st)
{
	struct ct_value *v;
	struct icmp_err e;
	struct ct_key k;
	int q_from_a;

	if (icmp_err_parse(skb, p, &e) != ICMP_ERR_OK)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	ct_key_make(&k, e.q_saddr, e.q_sport, e.q_daddr, e.q_dport, e.q_proto, &q_from_a);
	v = ct_lookup(&k, p);
	if (!v)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	st->ct_flags = v->flags;
	if (v->type == CT_NAT_REV && (v->flags & CT_F_POD_CLIENT) && ct_from_client(v, q_from_a)) {
		if (icmp_err_to_client(skb, p, &e, v->nat_addr, v->nat_port) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, p);
		return verdict(st, REASON_REV_NAT, TC_ACT_OK);
	}
	return verdict(st, REASON_CT_EST, TC_ACT_OK);
}

static __always_inline int twep_handle(struct __sk_buff *skb, const struct node_cfg *conf,
				       struct run_state *st)
{
	struct ct_value *v;
	struct ct_key k;
	struct pkt p;
	int rc, from_a;

	if (entry_parse(skb, &p, st, &rc))
		return rc;
	if (p.proto == IPPROTO_ICMP)
		return twep_icmp(skb, &p, st);
	if (!p.has_ports)
		return verdict(st, REASON_PASS, TC_ACT_OK);

	ct_key_make(&k, p.saddr, p.sport, p.daddr, p.dport, p.proto, &from_a);
	v = ct_lookup(&k, &p);
	if (!v)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	st->ct_flags = v->flags;
	if (v->type == CT_NAT_REV && (v->flags & CT_F_POD_CLIENT) && !ct_from_client(v, from_a)) {
		__be32 fe_addr = v->nat_addr;
		__be16 fe_port = v->nat_port;

		ct_account(skb, v, from_a, &p);
		if (rewrite_l3l4(skb, &p, 1, fe_addr, fe_port) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, &p);
		return verdict(st, REASON_REV_NAT, TC_ACT_OK);
	}
	/* e.g. a NodePort request DNATed or decapsulated by from_hep: already
	 * accounted there. */
	return verdict(st, REASON_CT_EST, TC_ACT_OK);
}

int to_wep(struct __sk_buff *skb)
{
	return entry_run(skb, HOOK_TO_WEP, twep_handle);
}
