/* connect: cgroup v2 sock_addr hooks of a node's cgroup (connect-time LB).
 *
 * A process of the node (every `netns-lab exec NODE` joins the node's
 * cgroup) that connects to a ClusterIP, or to a NodePort on any node
 * address, is given a backend in connect() itself: the socket is connected
 * to the backend, its packets carry the backend's address from the start and
 * no hook has to NAT them (Calico's bpfConnectTimeLoadBalancing). UDP gets
 * the same at connect() and at each sendmsg() to a frontend; recvmsg() and
 * getpeername() give the application the frontend back, so the rewrite is
 * invisible. Attached to one node's cgroup; the netns cookie check keeps a
 * process that sits in the cgroup but in another namespace untouched.
 * Every program returns 1 (allow): they rewrite, they never refuse.
 */
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/nat.h"
#include "lib/tpolicy.h"
#include "lib/ctlb.h"

#define SOCK_ALLOW 1

/* ctlb is on and the socket lives in the node's own network namespace. */
static __always_inline int ctlb_ours(const struct ctlb_cfg *c, struct bpf_sock_addr *ctx)
{
	return c && c->flags && bpf_get_netns_cookie(ctx) == c->netns_cookie;
}

/* True when this socket is the node's and its protocol is balanced. A
 * protocol left to the per-packet path (to_hep) is still balanced toward
 * the node's own address: those packets go through lo, past every TC hook. */
static __always_inline int ctlb_applies(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct ctlb_cfg *c = ctlb_cfg.lookup(&zero);
	struct node_cfg *node;
	__u32 want;

	if (!ctlb_ours(c, ctx))
		return 0;
	want = ctx->protocol == IPPROTO_TCP ? CTLB_F_TCP :
	       ctx->protocol == IPPROTO_UDP ? CTLB_F_UDP : 0;
	if (c->flags & want)
		return 1;
	node = cfg.lookup(&zero);
	return want && node && node->node_ip && ctx->user_ip4 == node->node_ip;
}

/* Frontend lookup for the address the application gave; NodePorts answer on
 * every node address, as they do for packets. */
static __always_inline struct fe_value *ctlb_frontend(struct bpf_sock_addr *ctx)
{
	struct pkt p;

	__builtin_memset(&p, 0, sizeof(p));
	p.daddr = ctx->user_ip4;
	p.dport = (__be16)ctx->user_port;
	p.proto = (__u8)ctx->protocol;
	return fe_lookup(&p, is_node(p.daddr));
}

/* Frontend -> backend in the socket address, remembered for the reverse
 * hooks. Random choice, as Calico's: there is no 5-tuple to hash yet.
 * internalTrafficPolicy Local holds for the node's own sockets too (lib/tpolicy.h). */
static __always_inline int ctlb_balance(struct bpf_sock_addr *ctx)
{
	struct ctlb_value fe_addr;
	struct ctlb_key k;
	struct fe_value *fe;
	struct be_value *be;

	if (!ctlb_applies(ctx))
		return SOCK_ALLOW;
	fe = ctlb_frontend(ctx);
	if (!fe)
		return SOCK_ALLOW;
	be = be_pick_policy(fe, bpf_get_prandom_u32(), TRAFFIC_HOST);
	if (!be)
		return SOCK_ALLOW;   /* none (here): left to to_hep, which drops it as kube-proxy's rules do */
	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memset(&fe_addr, 0, sizeof(fe_addr));
	k.cookie = bpf_get_socket_cookie(ctx);
	k.addr = be->addr;
	k.port = be->port;
	k.proto = (__u8)ctx->protocol;
	fe_addr.addr = ctx->user_ip4;
	fe_addr.port = (__be16)ctx->user_port;
	ctlb_nat.update(&k, &fe_addr);
	ctx->user_ip4 = be->addr;
	ctx->user_port = be->port;
	return SOCK_ALLOW;
}

/* Backend -> the frontend this socket asked for (peer of getpeername(),
 * source of a datagram recvmsg() returns). */
static __always_inline int ctlb_restore(struct bpf_sock_addr *ctx)
{
	struct ctlb_value *fe;
	struct ctlb_key k;
	__u32 zero = 0;

	/* Only sockets ctlb_balance() rewrote have an entry: no protocol check. */
	if (!ctlb_ours(ctlb_cfg.lookup(&zero), ctx))
		return SOCK_ALLOW;
	__builtin_memset(&k, 0, sizeof(k));
	k.cookie = bpf_get_socket_cookie(ctx);
	k.addr = ctx->user_ip4;
	k.port = (__be16)ctx->user_port;
	k.proto = (__u8)ctx->protocol;
	fe = ctlb_nat.lookup(&k);
	if (fe) {
		ctx->user_ip4 = fe->addr;
		ctx->user_port = fe->port;
	}
	return SOCK_ALLOW;
}

int ctlb_connect4(struct bpf_sock_addr *ctx)
{
	return ctlb_balance(ctx);
}

int ctlb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return ctlb_balance(ctx);
}

int ctlb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return ctlb_restore(ctx);
}

int ctlb_getpeer4(struct bpf_sock_addr *ctx)
{
	return ctlb_restore(ctx);
}
