/* from_wep: pod veth ingress, i.e. packets the pod sends (WEP = workload endpoint).
 *
 * - The pod connects to a ClusterIP, or to a NodePort on any node address:
 *   pick a backend, DNAT, let the kernel route it (never tunnelled, never DSR).
 * - The pod answers a NodePort connection:
 *     tunnelled to us (backend node): DSR -> source becomes the frontend and
 *     the reply leaves eth0 straight for the client; Tunnel -> back in VXLAN
 *     to the ingress node, which reverse-NATs;
 *     local backend (we are the ingress node): reverse NAT, out of eth0.
 * - ICMP errors the pod sends about such connections go the replies' way.
 * Replies are redirected out of eth0 ourselves: the node's routing could not
 * do it (the source is not ours to route, and for DSR it is another node's).
 */
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/nat.h"
#include "lib/tunnel.h"
#include "lib/icmp.h"
#include "lib/events.h"
#include "lib/hostnat.h"
#include "lib/hairpin.h"
#include "lib/fwd.h"
#include "lib/policy.h"

/* Source rewritten to the frontend (and the destination port to the
 * client's own, cl_port, when we replaced it), forwarded out of eth0 to
 * the client. */
static __always_inline int wep_reply_out(struct __sk_buff *skb, const struct node_cfg *conf,
					 struct pkt *p, struct run_state *st,
					 __be32 fe_addr, __be16 fe_port, __be16 cl_port, __u8 reason)
{
	if (p->ttl <= 1)
		return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
	if (rewrite_l3l4(skb, p, 1, fe_addr, fe_port) < 0 ||
	    (cl_port && rewrite_l3l4(skb, p, 0, p->daddr, cl_port) < 0) ||
	    ttl_decrement(skb, p) != TTL_OK)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	return verdict_redirect(st, conf, reason);
}

/* Backend node: the pod answers a connection that came through the tunnel. */
static __always_inline int wep_tunnel_reply(struct __sk_buff *skb, const struct node_cfg *conf,
					    struct pkt *p, struct run_state *st,
					    struct ct_value *v, int from_a)
{
	__be32 peer = v->tun_peer;
	__u32 hash;

	st->ct_flags = v->flags;
	if (v->flags & CT_F_DSR) {
		__be32 fe_addr = v->nat_addr;
		__be16 fe_port = v->nat_port;

		ct_account(skb, v, from_a, p);
		return wep_reply_out(skb, conf, p, st, fe_addr, fe_port, v->cl_port, REASON_DSR_REPLY);
	}
	/* The pod's MTU (fabric - 50) makes this impossible unless misconfigured:
	 * no ICMP toward our own pod, just count it. */
	if (encap_too_big(skb, conf, p))
		return verdict(st, REASON_DROP_FRAG_NEEDED, TC_ACT_SHOT);
	if (p->ttl <= 1)
		return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
	ct_account(skb, v, from_a, p);
	if ((v->cl_port && rewrite_l3l4(skb, p, 0, p->daddr, v->cl_port) < 0) ||
	    ttl_decrement(skb, p) != TTL_OK)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	hash = flow_hash(p->saddr, p->sport, p->daddr, p->dport, p->proto);
	/* Replies carry no frontend port and no flags. */
	if (tunnel_encap(skb, conf, peer, 0, 0, hash, p->tos) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	st->tun_peer = peer;
	return verdict_redirect(st, conf, REASON_ENCAP);
}

/* Later packet of the pod's own service connection (NAT_FWD hit). */
static __always_inline int wep_fwd_hit(struct __sk_buff *skb, const struct node_cfg *conf,
				       struct pkt *p, struct run_state *st, struct ct_key *fwd_key,
				       struct ct_value *fwd, int fwd_from_a)
{
	int hairpin = hairpin_is(p, fwd->nat_addr);
	int rc = fwd_dnat(skb, p, st, fwd, fwd_from_a, hairpin ? conf->node_ip : p->saddr);

	/* As in from_hep: no NAT_REV under that key means the connection is gone. */
	if (rc == 0) {
		ct.delete(fwd_key);
		return CT_RETRY_NEW;
	}
	if (rc < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	if (hairpin)
		return hairpin_request_out(skb, conf, p, st, REASON_NAT_EST);
	st_left(st, p);
	return verdict(st, REASON_NAT_EST, TC_ACT_OK);
}

/* The pod opens a connection to a service frontend. */
static __always_inline int wep_new_flow(struct __sk_buff *skb, const struct node_cfg *conf,
					struct pkt *p, struct run_state *st, const struct fe_value *fe)
{
	__u32 hash = flow_hash(p->saddr, p->sport, p->daddr, p->dport, p->proto);
	struct be_value *be = be_pick_policy(fe, hash, TRAFFIC_POD);
	__u8 flags = ct_flags_of_fe(fe) | CT_F_POD_CLIENT;
	int rc;

	if (!be)   /* refused back to the pod, out of the veth it came in by */
		return reject_no_backend(skb, p, st, skb->ifindex);
	if (hairpin_is(p, be->addr))
		return hairpin_new(skb, conf, p, st, be->addr, be->port, flags);
	rc = fwd_new(skb, p, st, be->addr, be->port, flags);
	if (rc)
		return verdict(st, rc, TC_ACT_SHOT);
	return verdict(st, REASON_NAT_NEW, TC_ACT_OK);
}

/* The pod sends an ICMP error (port unreachable, ...) about a packet of a
 * service connection: it travels like that connection's packets do. */
static __always_inline int wep_icmp(struct __sk_buff *skb, const struct node_cfg *conf,
				    struct pkt *p, struct run_state *st)
{
	struct ct_value *v;
	struct icmp_err e;
	struct ct_key k;
	int q_from_a, q_from_client;

	if (icmp_err_parse(skb, p, &e) != ICMP_ERR_OK)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	ct_key_make(&k, e.q_saddr, e.q_sport, e.q_daddr, e.q_dport, e.q_proto, &q_from_a);
	v = ct_lookup(&k, p);
	if (!v)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	st->ct_flags = v->flags;
	q_from_client = ct_from_client(v, q_from_a);

	/* Backend node, about the client's request: like a reply. */
	if (v->type == CT_NORMAL && (v->flags & CT_F_FROM_TUNNEL) && q_from_client) {
		__be32 peer = v->tun_peer;

		/* The quote is the client's packet: its own port back first. */
		if (v->cl_port && icmp_err_rewrite_quote(skb, &e, 1, e.q_saddr, v->cl_port) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);

		if (v->flags & CT_F_DSR) {
			__be32 fe_addr = v->nat_addr;
			__be16 fe_port = v->nat_port;

			if (p->ttl <= 1)
				return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
			if (icmp_err_to_client(skb, p, &e, fe_addr, fe_port) < 0 ||
			    ttl_decrement(skb, p) != TTL_OK)
				return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
			st_left(st, p);
			return verdict_redirect(st, conf, REASON_DSR_REPLY);
		}
		if (p->ttl <= 1)
			return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
		if (ttl_decrement(skb, p) != TTL_OK ||
		    tunnel_encap(skb, conf, peer, 0, 0,
				 flow_hash(p->saddr, 0, p->daddr, 0, p->proto), p->tos) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st->tun_peer = peer;
		return verdict_redirect(st, conf, REASON_ENCAP);
	}
	/* Ingress node with a local backend, about the external client's request. */
	if (v->type == CT_NAT_REV && !(v->flags & CT_F_POD_CLIENT) && !v->tun_peer && q_from_client) {
		__be32 fe_addr = v->nat_addr;
		__be16 fe_port = v->nat_port;

		if (p->ttl <= 1)
			return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
		if (icmp_err_to_client(skb, p, &e, fe_addr, fe_port) < 0 ||
		    (v->cl_port && icmp_err_rewrite_quote(skb, &e, 1, e.q_saddr, v->cl_port) < 0) ||
		    ttl_decrement(skb, p) != TTL_OK)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, p);
		return verdict_redirect(st, conf, REASON_REV_NAT);
	}
	/* A client pod, about a reply it got from the frontend: to the backend. */
	if (v->type == CT_NAT_FWD && (v->flags & CT_F_POD_CLIENT) && !q_from_client) {
		if (icmp_err_to_backend(skb, p, &e, v->nat_addr, v->nat_port) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, p);
		return verdict(st, REASON_NAT_EST, TC_ACT_OK);
	}
	return verdict(st, REASON_CT_EST, TC_ACT_OK);
}

static __always_inline int wep_handle(struct __sk_buff *skb, const struct node_cfg *conf,
				      struct run_state *st)
{
	struct fe_value *fe;
	struct ct_value *v;
	struct ct_key k;
	struct pkt p;
	int rc, from_a;

	if (entry_parse(skb, &p, st, &rc))
		return rc;
	if (p.proto == IPPROTO_ICMP)
		return wep_icmp(skb, conf, &p, st);
	if (!p.has_ports)
		return verdict(st, REASON_PASS, TC_ACT_OK);

	ct_key_make(&k, p.saddr, p.sport, p.daddr, p.dport, p.proto, &from_a);
	v = ct_lookup(&k, &p);
	if (v) {
		int from_client = ct_from_client(v, from_a);

		/* A local backend answers the node's own connection. */
		rc = host_client_reply(skb, conf, &p, st, v, from_a);
		if (rc >= 0)
			return rc;
		rc = hairpin_reply(skb, conf, &p, st, v, from_a);
		if (rc >= 0)
			return rc;

		if (v->type == CT_NORMAL && (v->flags & CT_F_FROM_TUNNEL) && !from_client)
			return wep_tunnel_reply(skb, conf, &p, st, v, from_a);
		if (v->type == CT_NAT_REV && !from_client) {
			st->ct_flags = v->flags;
			/* A pod client's reply is reverse-NATed at that pod (to_wep). */
			if ((v->flags & CT_F_POD_CLIENT) || v->tun_peer)
				return verdict(st, REASON_CT_EST, TC_ACT_OK);
			ct_account(skb, v, from_a, &p);
			return wep_reply_out(skb, conf, &p, st, v->nat_addr, v->nat_port, v->cl_port,
					     REASON_REV_NAT);
		}
		if (v->type == CT_NAT_FWD && (v->flags & CT_F_POD_CLIENT) && from_client) {
			rc = wep_fwd_hit(skb, conf, &p, st, &k, v, from_a);
			if (rc != CT_RETRY_NEW)
				return rc;
		} else {
			st->ct_flags = v->flags;
			return verdict(st, REASON_CT_EST, TC_ACT_OK);
		}
	}

	/* NodePorts answer on every node's address, for pods too. */
	fe = fe_lookup(&p, is_node(p.daddr));
	if (!fe)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	return wep_new_flow(skb, conf, &p, st, fe);
}

int from_wep(struct __sk_buff *skb)
{
	return entry_run(skb, HOOK_FROM_WEP, wep_handle);
}
