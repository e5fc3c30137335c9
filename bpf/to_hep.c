/* to_hep: node eth0 egress, i.e. packets leaving the node (HEP = host endpoint).
 *
 * Only the node's own service connections are handled here (lib/hostnat.h):
 * a packet from the node's address to a ClusterIP, or to a NodePort on any
 * node address, that connect-time load balancing did not already give a
 * backend. It is DNATed and redirected where the backend routes (a local
 * pod's veth or eth0). Why at egress: the node's own packets pass no other
 * hook of ours, and here the routing decision that chose eth0 is made
 * (ClusterIPs route to eth0, docs/datapath.md). Everything else leaving eth0
 * (routed pod traffic, our own tunnel and redirected packets) passes.
 */
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/nat.h"
#include "lib/tpolicy.h"
#include "lib/events.h"
#include "lib/tunnel.h"
#include "lib/hostnat.h"
#include "lib/fwd.h"

/* A piece of a datagram from_hep DNATed and left to the kernel to fragment
 * (lib/frags.h): into VXLAN toward the node hosting its destination, with
 * the frontend port and DSR flag the mark carries. The kernel routed it to
 * that node already, so the frame's MACs are the outer ones: TC_ACT_OK. */
static __always_inline int thep_encap_marked(struct __sk_buff *skb, const struct node_cfg *conf,
					     struct pkt *p, struct run_state *st)
{
	__u32 mark = skb->mark;
	__be32 peer = remote_node_of(conf, p->daddr);
	__u32 hash = flow_hash(p->saddr, p->sport, p->daddr, p->dport, p->proto);

	skb->mark = mark & ~(SKB_MARK_ENCAP | SKB_MARK_ENCAP_DSR | SKB_MARK_ENCAP_PORT);
	if (!peer)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	if (encap_too_big(skb, conf, p))   /* the route MTU should have prevented it */
		return verdict(st, REASON_DROP_FRAG_NEEDED, TC_ACT_SHOT);
	if (tunnel_encap(skb, conf, peer, (mark & SKB_MARK_ENCAP_DSR) ? VXH_F_DSR : 0,
			 bpf_htons(mark & SKB_MARK_ENCAP_PORT), hash, p->tos) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st->tun_peer = peer;
	return verdict(st, REASON_ENCAP, TC_ACT_OK);
}

/* The node's own address answers a NodePort connection (a host-network
 * endpoint): tunnelled to us -> back to the ingress node in VXLAN, or in
 * DSR straight to the client as the frontend; we are the ingress node ->
 * source back to the frontend. Returns -1 when v is no such reply. */
static __always_inline int thep_endpoint_reply(struct __sk_buff *skb, const struct node_cfg *conf,
					       struct pkt *p, struct run_state *st,
					       struct ct_value *v, int from_a)
{
	__be32 peer = v->tun_peer;

	if (ct_from_client(v, from_a) || (v->flags & CT_F_POD_CLIENT))
		return -1;
	st->ct_flags = v->flags;
	if (v->type == CT_NAT_REV && !peer) {
		__be32 fe_addr = v->nat_addr;
		__be16 fe_port = v->nat_port, cl_port = v->cl_port;

		ct_account(skb, v, from_a, p);
		if (rewrite_l3l4(skb, p, 1, fe_addr, fe_port) < 0 ||
		    (cl_port && rewrite_l3l4(skb, p, 0, p->daddr, cl_port) < 0))
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, p);
		return verdict(st, REASON_REV_NAT, TC_ACT_OK);
	}
	if (v->type != CT_NORMAL || !(v->flags & CT_F_FROM_TUNNEL))
		return -1;
	ct_account(skb, v, from_a, p);
	if (v->cl_port && rewrite_l3l4(skb, p, 0, p->daddr, v->cl_port) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	if (v->flags & CT_F_DSR) {
		if (rewrite_l3l4(skb, p, 1, v->nat_addr, v->nat_port) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, p);
		return verdict(st, REASON_DSR_REPLY, TC_ACT_OK);
	}
	if (encap_too_big(skb, conf, p))
		return verdict(st, REASON_DROP_FRAG_NEEDED, TC_ACT_SHOT);
	if (tunnel_encap(skb, conf, peer, 0, 0,
			 flow_hash(p->saddr, p->sport, p->daddr, p->dport, p->proto), p->tos) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	st->tun_peer = peer;
	return verdict_redirect(st, conf, REASON_ENCAP);
}

static __always_inline int thep_new_flow(struct __sk_buff *skb, const struct node_cfg *conf, struct pkt *p,
					 struct run_state *st, const struct fe_value *fe)
{
	__u32 hash = flow_hash(p->saddr, p->sport, p->daddr, p->dport, p->proto);
	struct be_value *be = be_pick_policy(fe, hash, TRAFFIC_HOST);
	int rc;

	if (!be)   /* none, or none here for iTP Local: dropped, as kube-proxy's OUTPUT rules do */
		return verdict(st, REASON_DROP_NO_BACKEND, TC_ACT_SHOT);
	rc = fwd_new(skb, p, st, be->addr, be->port, ct_flags_of_fe(fe));
	if (rc)
		return verdict(st, rc, TC_ACT_SHOT);
	return host_reroute(skb, conf, p, st, REASON_NAT_NEW);
}

static __always_inline int thep_handle(struct __sk_buff *skb, const struct node_cfg *conf,
				       struct run_state *st)
{
	struct fe_value *fe;
	struct ct_value *v;
	struct ct_key k;
	struct pkt p;
	int rc, from_a;

	if (entry_parse(skb, &p, st, &rc))
		return rc;
	if (skb->mark & SKB_MARK_ENCAP)
		return thep_encap_marked(skb, conf, &p, st);
	/* Not the node's own connection, or our own VXLAN. */
	if (p.saddr != conf->node_ip || !p.has_ports ||
	    (p.proto == IPPROTO_UDP && p.dport == bpf_htons(conf->tunnel_port)))
		return verdict(st, REASON_PASS, TC_ACT_OK);

	ct_key_make(&k, p.saddr, p.sport, p.daddr, p.dport, p.proto, &from_a);
	v = ct_lookup(&k, &p);
	if (v) {
		rc = thep_endpoint_reply(skb, conf, &p, st, v, from_a);
		if (rc >= 0)
			return rc;
		/* Replies we send as a frontend (NodePort, DSR) are the server side. */
		if (v->type != CT_NAT_FWD || !ct_from_client(v, from_a) ||
		    (v->flags & (CT_F_POD_CLIENT | CT_F_FROM_TUNNEL)))
			return verdict(st, REASON_PASS, TC_ACT_OK);
		rc = fwd_dnat(skb, &p, st, v, from_a, p.saddr);
		if (rc < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		if (rc > 0) {
			st_left(st, &p);
			return host_reroute(skb, conf, &p, st, REASON_NAT_EST);
		}
		ct.delete(&k);   /* its connection is gone: a new one */
	}
	fe = fe_lookup(&p, is_node(p.daddr));
	if (!fe)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	return thep_new_flow(skb, conf, &p, st, fe);
}

int to_hep(struct __sk_buff *skb)
{
	return entry_run(skb, HOOK_TO_HEP, thep_handle);
}
