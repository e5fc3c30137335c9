/* Service NAT for the node's own (host-networked) clients, per packet.
 *
 * Connect-time load balancing (bpf/connect.c) serves the sockets of the
 * node's cgroup for the protocols it is set for; everything else the node
 * itself sends to a ClusterIP or a NodePort (UDP under the default "TCP"
 * setting, all of it when it is "Disabled", processes outside the cgroup)
 * is NATed here, as Calico's bpfHostNetworkedNATWithoutCTLB does: DNAT at
 * eth0 egress (to_hep), the reply's source put back where it reaches the
 * node (from_hep for a remote backend, from_wep for a local pod). The
 * client of such a connection is the node's own address; nothing else in
 * the datapath has that client, so no conntrack flag is needed to tell.
 */
#ifndef NP_HOSTNAT_H
#define NP_HOSTNAT_H

#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/nat.h"
#include "lib/events.h"

/* The reply of a connection this node opened to a frontend: source back to
 * the frontend, then up the node's own stack. Returns -1 when p is not that. */
static __always_inline int host_client_reply(struct __sk_buff *skb, const struct node_cfg *conf,
					     struct pkt *p, struct run_state *st,
					     struct ct_value *v, int from_a)
{
	__be32 fe_addr;
	__be16 fe_port;

	if (v->type != CT_NAT_REV || p->daddr != conf->node_ip || ct_from_client(v, from_a) ||
	    (v->flags & CT_F_POD_CLIENT) || v->tun_peer)
		return -1;
	fe_addr = v->nat_addr;
	fe_port = v->nat_port;
	st->ct_flags = v->flags;
	ct_account(skb, v, from_a, p);
	if (rewrite_l3l4(skb, p, 1, fe_addr, fe_port) < 0)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	st_left(st, p);
	return verdict(st, REASON_REV_NAT, TC_ACT_OK);
}

/* Send a packet DNATed at eth0 egress where its new address routes, MACs
 * filled by bpf_redirect_neigh: a backend elsewhere stays on eth0; a local
 * pod's veth is found in the node's FIB (looked up as if forwarded from eth0:
 * the OUTPUT flavour binds the result to eth0, which the pod's route is not
 * on). No route found (never for a local pod in a lab; always in
 * BPF_PROG_TEST_RUN's empty namespace): eth0, the way it was going. */
static __always_inline int host_reroute(struct __sk_buff *skb, const struct node_cfg *conf,
					struct pkt *p, struct run_state *st, __u8 reason)
{
	struct bpf_fib_lookup fib;
	__u32 ifindex = conf->host_ifindex;
	long rc;

	if (is_local_pod(p->daddr)) {
		__builtin_memset(&fib, 0, sizeof(fib));
		fib.family = 2;   /* AF_INET */
		fib.l4_protocol = p->proto;
		fib.tot_len = p->ip_len;
		fib.ipv4_src = p->saddr;
		fib.ipv4_dst = p->daddr;
		fib.ifindex = skb->ifindex;
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
		if ((rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && fib.ifindex)
			ifindex = fib.ifindex;
	}
	return verdict_redirect_to(st, ifindex, reason);
}

#endif /* NP_HOSTNAT_H */
