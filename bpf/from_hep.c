/* from_hep: node eth0 ingress (HEP = host endpoint).
 *
 * - NodePort frontends on this node's address: pick a backend, DNAT, and
 *   either hand the packet to the kernel (local backend) or tunnel it to the
 *   backend's node (remote backend), in DSR mode flagged so the backend node
 *   answers the client directly.
 * - VXLAN from other nodes: accepted only from known nodes with our VNI;
 *   a request is decapsulated and delivered with the client's address
 *   intact; a tunnelled reply is reverse-NATed and sent to the client.
 * - A local pod's address as source from outside is spoofed: dropped.
 * - ICMP errors about those connections (frag-needed from a router on the
 *   client's side, port unreachable from a pod) follow them, quote NATed too.
 * Everything else (node-to-node, routed pod-to-pod) passes untouched.
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
#include "lib/policy.h"
#include "lib/lb.h"

/* Too big to encapsulate: tell a DF sender the MTU that fits, else drop. */
static __always_inline int hep_too_big(struct __sk_buff *skb, const struct node_cfg *conf,
				       const struct pkt *p, struct run_state *st)
{
	if (p->df && icmp_frag_needed(skb, p, conf->fabric_mtu - VXLAN_ENCAP_LEN) == 0) {
		st->nat_saddr = p->daddr;
		st->nat_daddr = p->saddr;
		st->nat_sport = 0;
		st->nat_dport = 0;
		return verdict(st, REASON_DROP_FRAG_NEEDED, bpf_redirect(conf->host_ifindex, 0));
	}
	return verdict(st, REASON_DROP_FRAG_NEEDED, TC_ACT_SHOT);
}

/* p is DNATed: forward it in VXLAN to peer and out of eth0. */
static __always_inline int hep_encap_out(struct __sk_buff *skb, const struct node_cfg *conf,
					 struct pkt *p, struct run_state *st, __be32 peer,
					 __u8 np_flags, __be32 fe_addr, __be16 fe_port, __u8 reason)
{
	__u32 hash;
	int ret;

	if (encap_too_big(skb, conf, p)) {
		/* DF clear (DF was answered before any state): fragmented by
		 * the kernel on its way out, encapsulated by to_hep (frags.h). */
		frag_encap_mark(skb, np_flags & VXH_F_DSR, fe_port);
		return verdict(st, reason, TC_ACT_OK);
	}
	ret = ttl_decrement(skb, p);
	if (ret == TTL_EXPIRED)
		return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
	if (ret < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	hash = flow_hash(p->saddr, p->sport, p->daddr, p->dport, p->proto);
	if (tunnel_encap(skb, conf, peer, np_flags, fe_port, hash, p->tos) < 0 ||
	    ((np_flags & VXH_F_FE_ADDR) && lb_tag_frontend(skb, fe_addr) < 0))
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st->tun_peer = peer;
	return verdict_redirect(st, conf, reason);
}

/* First packet of a connection to frontend fe. */
static __always_inline int hep_new_flow(struct __sk_buff *skb, const struct node_cfg *conf,
					struct pkt *p, struct run_state *st,
					const struct fe_value *fe)
{
	__u32 hash = flow_hash(p->saddr, p->sport, p->daddr, p->dport, p->proto);
	__u8 flags, np_flags = 0, reason = REASON_NAT_NEW;
	struct be_value *be = lb_pick(fe, p, hash, &reason);
	__be32 be_addr, fe_addr, peer;
	__be16 be_port, fe_port, cport;
	struct ct_value *held, *take = NULL;
	struct ct_new rev, fwd;
	struct ct_key rk;
	int rev_from_a, rc;

	if (!be)
		return reason == REASON_DROP_NO_BACKEND || reason == REASON_DROP_MID_FLOW
			? reject_flow(skb, p, st, conf->host_ifindex, reason)
			: verdict(st, reason, TC_ACT_SHOT);
	reason = REASON_NAT_NEW;
	be_addr = be->addr;
	be_port = be->port;
	flags = ct_flags_of_fe(fe);
	peer = remote_node_of(conf, be_addr);
	if (peer) {
		/* Checked before any state is created: a dropped packet leaves none.
		 * DF clear: the kernel fragments it for us (hep_encap_out). */
		if (p->df && encap_too_big(skb, conf, p))
			return hep_too_big(skb, conf, p, st);
		if (p->ttl <= 1)
			return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
		flags |= CT_F_TUNNEL;
		/* Decided once per connection and recorded on both nodes, so a
		 * mode switch never changes a live connection. */
		if (dsr_allowed(conf, p->saddr)) {
			flags |= CT_F_DSR;
			np_flags = VXH_F_DSR;
		}
		if (p->daddr != conf->node_ip)
			np_flags |= VXH_F_FE_ADDR;   /* not a NodePort of ours: say which frontend */
	}
	fe_addr = p->daddr;
	fe_port = p->dport;
	/* Both entries or none: a full map drops the connection (the client
	 * retries). Inserting first costs nothing extra when the key is free,
	 * the usual case; a held key is looked at only then. */
	cport = p->sport;
	rev = (struct ct_new){ .type = CT_NAT_REV, .flags = flags, .sport = p->sport, .daddr = be_addr,
			       .dport = be_port, .nat_addr = fe_addr, .nat_port = fe_port, .tun_peer = peer };
	rc = ct_create(skb, p, &rev, CT_NEW_ONLY);
	if (rc == -EEXIST) {
		ct_key_make(&rk, p->saddr, p->sport, be_addr, be_port, p->proto, &rev_from_a);
		held = ct_lookup(&rk, p);
		if (!held) {
			/* An expired or closed connection's, deleted by the lookup. */
			rc = ct_create(skb, p, &rev, CT_REPLACE);
		} else if (!peer && (fe->flags & FE_F_EXTERNAL) &&
			   lb_flow_is(held, CT_NORMAL, p->daddr, p->dport, rev_from_a)) {
			/* This connection, tunnelled to us until its route moved
			 * here: taken over once its NAT_FWD is in (below). */
			take = held;
			rc = 0;
		} else {
			/* (client, backend) is a live connection already: this one,
			 * e.g. the same client port through another node, gets a new
			 * client port. Not DSR: only we can give replies the old back. */
			flags &= ~CT_F_DSR;
			rev.flags = flags;
			np_flags = 0;
			rc = ct_create_psnat(skb, p, &rev);
			if (rc == 0)
				return verdict(st, REASON_DROP_PSNAT_FAIL, TC_ACT_SHOT);
			if (rc > 0) {
				cport = rc;
				rc = 0;
				flags |= CT_F_PSNAT;
				reason = REASON_PSNAT;
			}
		}
	}
	if (rc < 0)
		return verdict(st, REASON_DROP_CT_FULL, TC_ACT_SHOT);
	fwd = (struct ct_new){ .type = CT_NAT_FWD, .flags = flags, .sport = p->sport, .daddr = fe_addr,
			       .dport = fe_port, .nat_addr = be_addr, .nat_port = be_port, .tun_peer = peer,
			       .cl_port = cport != p->sport ? cport : 0 };
	if (ct_create(skb, p, &fwd, CT_REPLACE) < 0) {
		if (!take)   /* the taken-over entry stays its old connection's */
			ct_uncreate(p, &rev, cport);
		return verdict(st, REASON_DROP_CT_FULL, TC_ACT_SHOT);
	}
	if (take)
		lb_take_over(skb, p, take, flags, rev_from_a);
	st->ct_flags = flags;

	if (rewrite_l3l4(skb, p, 0, be_addr, be_port) < 0 ||
	    (cport != p->sport && rewrite_l3l4(skb, p, 1, p->saddr, cport) < 0))
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	if (!peer) {
		skb->mark |= SKB_MARK_BYPASS;
		return verdict(st, reason, TC_ACT_OK);   /* the kernel routes it to the pod */
	}
	return hep_encap_out(skb, conf, p, st, peer, np_flags, fe_addr, fe_port, reason);
}

/* Later packet of an external client's connection (NAT_FWD hit). */
static __always_inline int hep_fwd_hit(struct __sk_buff *skb, const struct node_cfg *conf,
				       struct pkt *p, struct run_state *st,
				       struct ct_key *fwd_key, struct ct_value *fwd, int fwd_from_a)
{
	__be32 be_addr = fwd->nat_addr, peer;
	__be16 be_port = fwd->nat_port, fe_port = p->dport;
	__be16 cport = fwd->cl_port ? fwd->cl_port : p->sport;   /* the client's port toward the backend */
	struct ct_value *rev;
	struct ct_key rk;
	int rev_from_a;
	__u8 np_flags;

	ct_key_make(&rk, p->saddr, cport, be_addr, be_port, p->proto, &rev_from_a);
	rev = ct_lookup(&rk, p);
	if (!rev || rev->type != CT_NAT_REV || rev->cl_port != (fwd->cl_port ? p->sport : 0)) {
		/* The connection's state (NAT_REV) expired or was evicted, or the
		 * client reopened the 4-tuple, or another entry now holds that key
		 * (as the GC judges it): the FWD leg goes with it. */
		ct.delete(fwd_key);
		return CT_RETRY_NEW;
	}
	peer = rev->tun_peer;
	st->ct_flags = rev->flags;
	np_flags = (rev->flags & CT_F_DSR) ? VXH_F_DSR : 0;
	if (p->daddr != conf->node_ip)
		np_flags |= VXH_F_FE_ADDR;
	if (peer) {
		if (p->df && encap_too_big(skb, conf, p))
			return hep_too_big(skb, conf, p, st);
		if (p->ttl <= 1)
			return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
	}
	ct_account(skb, fwd, fwd_from_a, p);
	ct_account(skb, rev, rev_from_a, p);

	if (rewrite_l3l4(skb, p, 0, be_addr, be_port) < 0 ||
	    (cport != p->sport && rewrite_l3l4(skb, p, 1, p->saddr, cport) < 0))
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	if (!peer) {
		skb->mark |= SKB_MARK_BYPASS;
		return verdict(st, REASON_NAT_EST, TC_ACT_OK);
	}
	return hep_encap_out(skb, conf, p, st, peer, np_flags, rev->nat_addr, fe_port, REASON_ENCAP);
}

/* An ICMP error from outside about a connection we are the frontend of
 * (e.g. a router on the client's side reporting frag-needed for a reply):
 * point it at the backend, through the tunnel when the backend is remote. */
static __always_inline int hep_icmp(struct __sk_buff *skb, const struct node_cfg *conf,
				    struct pkt *p, struct run_state *st)
{
	__be32 be_addr, peer;
	__be16 be_port, fe_port, cport;
	struct ct_value *v, *rev;
	struct icmp_err e;
	struct ct_key k;
	int q_from_a;

	if (icmp_err_parse(skb, p, &e) != ICMP_ERR_OK)
		return verdict(st, REASON_PASS, TC_ACT_OK);   /* echo etc.: the node answers */
	ct_key_make(&k, e.q_saddr, e.q_sport, e.q_daddr, e.q_dport, e.q_proto, &q_from_a);
	v = ct_lookup(&k, p);
	/* The quote is a reply we sent as the frontend: (frontend -> client). */
	if (!v || v->type != CT_NAT_FWD || (v->flags & (CT_F_POD_CLIENT | CT_F_FROM_TUNNEL)) ||
	    ct_from_client(v, q_from_a))
		return verdict(st, v ? REASON_CT_EST : REASON_PASS, TC_ACT_OK);
	be_addr = v->nat_addr;
	be_port = v->nat_port;
	fe_port = e.q_sport;
	cport = v->cl_port ? v->cl_port : e.q_dport;   /* the client's port toward the backend */
	ct_key_make(&k, e.q_daddr, cport, be_addr, be_port, e.q_proto, &q_from_a);
	rev = ct_lookup(&k, p);
	if (!rev)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	peer = rev->tun_peer;
	st->ct_flags = rev->flags;
	if (peer && p->ttl <= 1)
		return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
	if (icmp_err_to_backend(skb, p, &e, be_addr, be_port) < 0 ||
	    (cport != e.q_dport && icmp_err_rewrite_quote(skb, &e, 0, e.q_daddr, cport) < 0))
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	if (!peer) {
		skb->mark |= SKB_MARK_BYPASS;
		return verdict(st, REASON_NAT_EST, TC_ACT_OK);
	}
	/* A non-zero frontend port: the backend node takes it as request-direction. */
	return hep_encap_out(skb, conf, p, st, peer, 0, 0, fe_port, REASON_ENCAP);
}

/* Backend node: is v the entry of the flow ingress node peer tunnels us
 * for its NodePort fe_port, seen from the client's side? */
static __always_inline int tun_flow_is(const struct ct_value *v, __be32 peer, __be16 fe_port,
				       int from_a)
{
	return v->type == CT_NORMAL && (v->flags & CT_F_FROM_TUNNEL) && v->tun_peer == peer &&
	       v->nat_port == fe_port && ct_from_client(v, from_a);
}

/* Backend node: the entry of a flow from ingress node peer whose client
 * port we replaced, found through its FWD entry (client, peer:fe_port);
 * NULL if none. *cport gets the port the pod knows the client by. Only
 * looked at when the packet's own 4-tuple is not that flow's. */
static __always_inline struct ct_value *tun_psnat_lookup(struct pkt *p, __be32 client,
							 __be16 client_port, __be32 be_addr,
							 __be16 be_port, __u8 proto, __be32 peer,
							 __be16 fe_port, __be16 *cport, int *from_a)
{
	struct ct_value *fwd, *v;
	struct ct_key fk, k;
	int fwd_from_a;

	ct_key_make(&fk, client, client_port, peer, fe_port, proto, &fwd_from_a);
	fwd = ct.lookup(&fk);
	if (!fwd || fwd->type != CT_NAT_FWD || !(fwd->flags & CT_F_FROM_TUNNEL) ||
	    fwd->tun_peer != peer || fwd->nat_addr != be_addr || fwd->nat_port != be_port)
		return NULL;
	*cport = fwd->cl_port;
	ct_key_make(&k, client, *cport, be_addr, be_port, proto, from_a);
	v = ct_lookup(&k, p);
	if (!v || !tun_flow_is(v, peer, fe_port, *from_a) || v->cl_port != client_port) {
		ct.delete(&fk);   /* its flow is gone: the FWD leg goes with it */
		return NULL;
	}
	return v;
}

/* Backend node: a request-direction packet tunnelled by ingress node peer;
 * v is the entry under its own 4-tuple (NULL if none). Delivered to the pod
 * with the client's address intact (its port replaced when another live
 * connection already is that 4-tuple). */
static __always_inline int hep_tunnel_request(struct __sk_buff *skb, struct pkt *in,
					      struct run_state *st, __be32 peer,
					      const struct vxlan_np *vx, struct ct_value *v, int from_a)
{
	__be16 cport = in->sport;
	__u8 reason = REASON_DECAP;
	struct ct_value *rv;
	int rv_from_a;
	__be32 fe_addr;

	if (v && tun_flow_is(v, peer, vx->fe_port, from_a) && !v->cl_port) {
		/* Later packet of a flow we know. */
		st->ct_flags = v->flags;
		ct_account(skb, v, from_a, in);
	} else if (vx->fe_port && (fe_addr = lb_frontend_of(skb, vx, peer)) != peer &&
		   lb_ingress_moved(v, peer, fe_addr, vx->fe_port, from_a)) {
		/* Later packet of a flow to an external frontend, now through peer. */
		st->ct_flags = v->flags;
		ct_account(skb, v, from_a, in);
	/* A SYN whose own 4-tuple is free opens a connection with no need of a
	 * replaced port: the FWD lookup, a cache miss on every new connection,
	 * is skipped (a replaced flow's SYN retransmitted after the 4-tuple's
	 * holder left just takes the 4-tuple itself). */
	} else if (vx->fe_port && (v || !tcp_opening(in)) &&
		   (rv = tun_psnat_lookup(in, in->saddr, in->sport, in->daddr, in->dport, in->proto,
					  peer, vx->fe_port, &cport, &rv_from_a))) {
		/* Later packet of a flow whose client port we replaced. */
		st->ct_flags = rv->flags;
		ct_account(skb, rv, rv_from_a, in);
	} else {
		__u8 flags = CT_F_FROM_TUNNEL | CT_F_TUNNEL;

		/* Port 0 marks a reply: one for a flow we do not track must not
		 * be delivered with an un-NATed source. */
		if (!vx->fe_port)
			return verdict(st, REASON_DROP_TUN_NO_FLOW, TC_ACT_SHOT);
		if (vx->np_flags & VXH_F_DSR)
			flags |= CT_F_DSR;
		/* The frontend is the ingress node (outer source) + the NodePort
		 * carried in the VXLAN header: a DSR reply needs both. */
		struct ct_new n = { .type = CT_NORMAL, .flags = flags, .sport = in->sport,
				    .daddr = in->daddr, .dport = in->dport,
				    .nat_addr = lb_frontend_of(skb, vx, peer),
				    .nat_port = vx->fe_port, .tun_peer = peer };

		if (!v) {
			if (ct_create(skb, in, &n, CT_REPLACE) < 0)
				return verdict(st, REASON_DROP_CT_FULL, TC_ACT_SHOT);
		} else {
			/* The 4-tuple is another live connection's, e.g. the same
			 * client port through another node or our own NodePort. */
			struct ct_new fwd;
			int rc = ct_create_psnat(skb, in, &n);

			if (rc < 0)
				return verdict(st, REASON_DROP_CT_FULL, TC_ACT_SHOT);
			if (!rc)
				return verdict(st, REASON_DROP_PSNAT_FAIL, TC_ACT_SHOT);
			cport = rc;
			flags |= CT_F_PSNAT;
			fwd = (struct ct_new){ .type = CT_NAT_FWD, .flags = flags, .sport = in->sport,
					       .daddr = peer, .dport = vx->fe_port, .nat_addr = in->daddr,
					       .nat_port = in->dport, .tun_peer = peer, .cl_port = cport };
			if (ct_create(skb, in, &fwd, CT_REPLACE) < 0) {
				ct_uncreate(in, &n, cport);   /* both entries or none */
				return verdict(st, REASON_DROP_CT_FULL, TC_ACT_SHOT);
			}
			reason = REASON_PSNAT;
		}
		st->ct_flags = flags;
	}
	if (tunnel_decap(skb, in, NULL) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	if (cport != in->sport) {
		if (rewrite_l3l4(skb, in, 1, in->saddr, cport) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, in);
	}
	/* The client's address is intact: the kernel routes it to the pod. */
	skb->mark |= SKB_MARK_BYPASS;
	return verdict(st, reason, TC_ACT_OK);
}

/* An ICMP error inside VXLAN from node `peer`. */
static __always_inline int hep_tunnel_icmp(struct __sk_buff *skb, const struct node_cfg *conf,
					   struct pkt *in, struct run_state *st, __be32 peer,
					   const struct vxlan_np *vx)
{
	struct ct_value *v;
	struct icmp_err e;
	struct ct_key k;
	__be16 cport;
	int q_from_a;

	if (icmp_err_parse(skb, in, &e) != ICMP_ERR_OK)
		return verdict(st, REASON_DROP_MALFORMED, TC_ACT_SHOT);   /* we tunnel no other ICMP */
	ct_key_make(&k, e.q_saddr, e.q_sport, e.q_daddr, e.q_dport, e.q_proto, &q_from_a);
	v = ct_lookup(&k, in);

	/* Ingress node: the backend's side reports on the client's packet: to the client. */
	if (v && v->type == CT_NAT_REV && !(v->flags & CT_F_POD_CLIENT) &&
	    v->tun_peer == peer && ct_from_client(v, q_from_a)) {
		__be32 fe_addr = v->nat_addr;
		__be16 fe_port = v->nat_port, cl_port = v->cl_port;

		st->ct_flags = v->flags;
		if (in->ttl <= 1)
			return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
		if (tunnel_decap(skb, in, &e) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		if (icmp_err_to_client(skb, in, &e, fe_addr, fe_port) < 0 ||
		    (cl_port && icmp_err_rewrite_quote(skb, &e, 1, e.q_saddr, cl_port) < 0) ||
		    ttl_decrement(skb, in) != TTL_OK)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, in);
		return verdict_redirect(st, conf, REASON_REV_NAT);
	}
	/* Backend node: about the backend's own reply, already translated by
	 * the ingress node: deliver (to the port the pod knows the client by). */
	cport = e.q_dport;
	if (!(v && v->type == CT_NORMAL && (v->flags & CT_F_FROM_TUNNEL) &&
	      v->tun_peer == peer && !ct_from_client(v, q_from_a) && !v->cl_port)) {
		v = NULL;
		if (vx->fe_port)
			v = tun_psnat_lookup(in, e.q_daddr, e.q_dport, e.q_saddr, e.q_sport,
					     e.q_proto, peer, vx->fe_port, &cport, &q_from_a);
	}
	if (!v)
		return verdict(st, REASON_DROP_TUN_NO_FLOW, TC_ACT_SHOT);
	st->ct_flags = v->flags;
	if (tunnel_decap(skb, in, &e) < 0 ||
	    (cport != e.q_dport && icmp_err_rewrite_quote(skb, &e, 0, e.q_daddr, cport) < 0))
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	skb->mark |= SKB_MARK_BYPASS;
	return verdict(st, REASON_DECAP, TC_ACT_OK);
}

/* VXLAN to our address: outer is the parsed outer packet. */
static __always_inline int hep_tunnel(struct __sk_buff *skb, const struct node_cfg *conf,
				      const struct pkt *outer, struct run_state *st)
{
	__be32 peer = outer->saddr;
	/* The tunnelled packet is the UDP payload, which ends where the outer
	 * datagram does: bytes after it in the frame (Ethernet padding) are
	 * not part of it, however VXLAN-like they look. */
	__u32 vx_off = outer->l4_off + sizeof(struct udphdr), end = outer->l4_end;
	struct vxlan_np vx, *vxp;
	struct ethhdr *inner_eth;
	struct pkt in;
	struct ct_key k;
	struct ct_value *v;
	int from_a;

	/* Peers are the other nodes. Our own address as outer source on eth0 is
	 * spoofed (a martian to the kernel), and a flow "tunnelled from us" would
	 * get its replies encapsulated back to ourselves. */
	if (peer == conf->node_ip || !is_node(peer))
		return verdict(st, REASON_DROP_TUN_UNKNOWN_SRC, TC_ACT_SHOT);
	/* adjust_room(-50) strips exactly outer IP (no options) + UDP + VXLAN + Ethernet. */
	if (outer->l4_off != ETH_HLEN + sizeof(struct iphdr))
		return verdict(st, REASON_DROP_MALFORMED, TC_ACT_SHOT);
	/* Only a whole datagram is a tunnel packet: we send them DF, and a
	 * fragment's UDP length (hence its inner frame) runs into fragments
	 * this program never sees together. */
	if (outer->frag != FRAG_NONE)
		return verdict(st, REASON_DROP_MALFORMED, TC_ACT_SHOT);
	if (vx_off + sizeof(vx) > end || !(vxp = pkt_ptr(skb, vx_off, sizeof(vx))))
		return verdict(st, REASON_DROP_MALFORMED, TC_ACT_SHOT);
	vx = *vxp;   /* kept: the parse below may pull, which moves the packet */
	if (!(vx.flags & VXLAN_F_VNI) || (bpf_ntohl(vx.vni) >> 8) != conf->vni)
		return verdict(st, REASON_DROP_TUN_BAD_VNI, TC_ACT_SHOT);
	if (vx_off + sizeof(vx) + ETH_HLEN > end ||
	    !(inner_eth = pkt_ptr(skb, vx_off + sizeof(vx), ETH_HLEN)) ||
	    inner_eth->h_proto != bpf_htons(ETH_P_IP))
		return verdict(st, REASON_DROP_MALFORMED, TC_ACT_SHOT);
	if (parse_ipv4(skb, ETH_HLEN + VXLAN_ENCAP_LEN, end, &in) != PARSE_OK)
		return verdict(st, REASON_DROP_MALFORMED, TC_ACT_SHOT);
	frag_fill(&in);   /* a later inner fragment without a seen first one stays portless */
	st_arrived(st, &in);
	st->tun_peer = peer;
	if (in.proto == IPPROTO_ICMP)
		return hep_tunnel_icmp(skb, conf, &in, st, peer, &vx);
	/* We only ever tunnel TCP/UDP with ports and ICMP errors: anything else is bogus. */
	if (!in.has_ports)
		return verdict(st, REASON_DROP_MALFORMED, TC_ACT_SHOT);

	ct_key_make(&k, in.saddr, in.sport, in.daddr, in.dport, in.proto, &from_a);
	v = ct_lookup(&k, &in);

	/* Ingress node: the backend node tunnelled the reply back to us. */
	if (v && v->type == CT_NAT_REV && !(v->flags & CT_F_POD_CLIENT) &&
	    v->tun_peer == peer && !ct_from_client(v, from_a)) {
		__be32 fe_addr = v->nat_addr;
		__be16 fe_port = v->nat_port, cl_port = v->cl_port;

		st->ct_flags = v->flags;
		if (in.ttl <= 1)
			return verdict(st, REASON_DROP_TTL, TC_ACT_SHOT);
		ct_account(skb, v, from_a, &in);
		if (tunnel_decap(skb, &in, NULL) < 0)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		if (rewrite_l3l4(skb, &in, 1, fe_addr, fe_port) < 0 ||
		    (cl_port && rewrite_l3l4(skb, &in, 0, in.daddr, cl_port) < 0) ||
		    ttl_decrement(skb, &in) != TTL_OK)
			return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
		st_left(st, &in);
		/* Redirect, not TC_ACT_OK: a packet from our own address arriving
		 * from outside is a martian to the kernel. */
		return verdict_redirect(st, conf, REASON_REV_NAT);
	}
	return hep_tunnel_request(skb, &in, st, peer, &vx, v, from_a);
}

static __always_inline int hep_handle(struct __sk_buff *skb, const struct node_cfg *conf,
				      struct run_state *st)
{
	struct fe_value *fe;
	struct ct_value *v;
	struct ct_key k;
	struct pkt p;
	int rc, from_a;

	if (entry_parse(skb, &p, st, &rc))
		return rc;

	if (p.proto == IPPROTO_UDP && p.has_ports && p.daddr == conf->node_ip &&
	    p.dport == bpf_htons(conf->tunnel_port))
		return hep_tunnel(skb, conf, &p, st);

	if (p.proto == IPPROTO_ICMP || !p.has_ports) {
		if (is_local_pod(p.saddr))
			return verdict(st, REASON_DROP_SPOOFED, TC_ACT_SHOT);
		if (p.proto == IPPROTO_ICMP)
			return hep_icmp(skb, conf, &p, st);
		return verdict(st, REASON_PASS, TC_ACT_OK);
	}

	ct_key_make(&k, p.saddr, p.sport, p.daddr, p.dport, p.proto, &from_a);
	v = ct.lookup(&k);
	/* A local pod's address arriving from outside is spoofed. The check is
	 * an LPM lookup; an established external connection's request skips it,
	 * its entry proving the source passed it at creation (ct_src_checked).
	 * Any other packet is checked before an entry is acted on, expiry
	 * included: a spoofed packet must not use, nor delete, an entry. */
	if (!(v && ct_src_checked(v, from_a)) && is_local_pod(p.saddr))
		return verdict(st, REASON_DROP_SPOOFED, TC_ACT_SHOT);
	v = ct_validate(&k, v, &p);
	if (v) {
		rc = host_client_reply(skb, conf, &p, st, v, from_a);
		if (rc >= 0)
			return rc;
		if (v->type != CT_NAT_FWD) {
			/* e.g. the reply of a pod's ClusterIP connection from a
			 * remote backend: to_wep reverse-NATs it at the pod. */
			st->ct_flags = v->flags;
			return verdict(st, REASON_CT_EST, TC_ACT_OK);
		}
		if ((v->flags & CT_F_POD_CLIENT) || !ct_from_client(v, from_a))
			return verdict(st, REASON_PASS, TC_ACT_OK);
		rc = hep_fwd_hit(skb, conf, &p, st, &k, v, from_a);
		if (rc != CT_RETRY_NEW)
			return rc;
	}

	fe = fe_lookup(&p, p.daddr == conf->node_ip);
	if (!fe)
		return verdict(st, REASON_PASS, TC_ACT_OK);
	return hep_new_flow(skb, conf, &p, st, fe);
}

int from_hep(struct __sk_buff *skb)
{
	return entry_run(skb, HOOK_FROM_HEP, hep_handle);
}
