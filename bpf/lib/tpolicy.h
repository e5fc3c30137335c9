/* Traffic policies (externalTrafficPolicy / internalTrafficPolicy Local):
 * which backends a new flow may use.
 *
 * Local backends sit at ordinals 0..local_count-1 of nat_be (the syncer
 * writes them first), so a Local policy is a smaller modulus, nothing more.
 * Kept apart from nat.h: which backends a flow may use is policy, how one is
 * looked up is NAT. Included by the TC programs (through lib/policy.h) and
 * by the cgroup programs of connect-time LB alike.
 */
#ifndef NP_TPOLICY_H
#define NP_TPOLICY_H

#include "lib/maps.h"

#define TRAFFIC_EXTERNAL 0    /* from outside the node's pods: from_hep */
#define TRAFFIC_POD      1    /* from a local pod: from_wep */
#define TRAFFIC_HOST     2    /* from the node itself: to_hep, connect-time LB */

/* Backends a new flow of this kind may use: all of them, or only this
 * node's when the frontend's policy is Local for it. A pod or the node
 * itself reaching a NodePort is not external traffic (kube-proxy's "pod
 * traffic" and "route LOCAL traffic ... external destinations" rules send
 * it cluster-wide), so for them only the internal policy counts: the node's
 * own sockets get it as kube-proxy's OUTPUT chain gives it to them. */
static __always_inline __u32 be_count_for(const struct fe_value *fe, int traffic)
{
	__u32 local = traffic == TRAFFIC_EXTERNAL ? (FE_F_ETP_LOCAL | FE_F_ITP_LOCAL) : FE_F_ITP_LOCAL;

	return (fe->flags & local) ? fe->local_count : fe->count;
}

/* The backend of a new flow of this kind: ordinal hash % (backends it may use); NULL: nobody may take it. */
static __always_inline struct be_value *be_pick_policy(const struct fe_value *fe, __u32 hash,
							int traffic)
{
	__u32 n = be_count_for(fe, traffic);
	struct be_key k;

	if (n == 0)
		return NULL;
	k.svc_id = fe->svc_id;
	k.ordinal = hash % n;
	return nat_be.lookup(&k);
}

#endif /* NP_TPOLICY_H */
