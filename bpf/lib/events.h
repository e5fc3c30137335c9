/* The end of every program run: one counter, and an event when tracing.
 *
 * Handlers fill a run_state as they go (the packet as it arrived, as it
 * left, the verdict's reason) and every entry function returns through
 * run_finish(), which is the only place that touches `counters`: that is
 * how "exactly one reason per packet" holds by construction.
 */
#ifndef NP_EVENTS_H
#define NP_EVENTS_H

#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/frags.h"

struct run_state {
	__be32 saddr, daddr;          /* as arrived */
	__be16 sport, dport;
	__be32 nat_saddr, nat_daddr;  /* as left */
	__be16 nat_sport, nat_dport;
	__be32 tun_peer;
	__u8   proto;
	__u8   ct_flags;
	__u8   reason;
	__u8   pad;
};

static __always_inline void st_arrived(struct run_state *st, const struct pkt *p)
{
	st->saddr = st->nat_saddr = p->saddr;
	st->daddr = st->nat_daddr = p->daddr;
	st->sport = st->nat_sport = p->sport;
	st->dport = st->nat_dport = p->dport;
	st->proto = p->proto;
}

static __always_inline void st_left(struct run_state *st, const struct pkt *p)
{
	st->nat_saddr = p->saddr;
	st->nat_daddr = p->daddr;
	st->nat_sport = p->sport;
	st->nat_dport = p->dport;
}

/* Record why, return what: handlers end with `return verdict(st, R, TC_ACT_x)`. */
static __always_inline int verdict(struct run_state *st, __u8 reason, int action)
{
	st->reason = reason;
	return action;
}

/* Hand the packet, rewritten and ready, to eth0 through the neighbour
 * subsystem (which fills in the MACs): the verdict of every reply, DSR and
 * encapsulated packet that leaves past the node's routing (or, for the
 * node's own connections, out of the interface the FIB gave). A refused
 * redirect is a failed helper like any other. */
static __always_inline int verdict_redirect_to(struct run_state *st, __u32 ifindex, __u8 reason)
{
	int ret = redirect_neigh4(ifindex, NULL, 0, 0);

	if (ret != TC_ACT_REDIRECT)
		return verdict(st, REASON_DROP_ENCAP_FAIL, TC_ACT_SHOT);
	return verdict(st, reason, ret);
}

static __always_inline int verdict_redirect(struct run_state *st, const struct node_cfg *conf,
					    __u8 reason)
{
	return verdict_redirect_to(st, conf->host_ifindex, reason);
}

/* What every entry does first, alike: parse; non-IPv4 (ARP for the
 * 169.254.1.1 gateway, IPv6) passes untouched, malformed drops, and
 * a non-first fragment is matched by the ports its first fragment recorded
 * (lib/frags.h), or passes untouched when that was not seen here. Returns 1
 * when the run is decided, with *action set; 0 to carry on with *p filled in. */
static __always_inline int entry_parse(struct __sk_buff *skb, struct pkt *p,
				       struct run_state *st, int *action)
{
	int rc = parse_frame(skb, p);

	if (rc == PARSE_NOT_IPV4) {
		*action = verdict(st, REASON_PASS, TC_ACT_OK);
		return 1;
	}
	if (rc != PARSE_OK) {
		*action = verdict(st, REASON_DROP_MALFORMED, TC_ACT_SHOT);
		return 1;
	}
	rc = frag_fill(p);
	st_arrived(st, p);
	if (rc < 0) {   /* a later fragment whose first one this hook has not seen */
		*action = verdict(st, REASON_PASS, TC_ACT_OK);
		return 1;
	}
	return 0;
}

static __always_inline int run_finish(struct __sk_buff *skb, const struct node_cfg *conf,
				      __u8 hook, const struct run_state *st, int action)
{
	__u32 reason = st->reason < MAX_REASONS ? st->reason : REASON_PASS;
	__u32 idx = hook * MAX_REASONS + reason;
	__u64 *cnt = counters.lookup(&idx);
	struct event *e;

	if (cnt)
		*cnt += 1;   /* per-CPU slot: no atomics needed */

	if (!conf || !(conf->flags & CFG_F_TRACE))
		return action;
	e = events.ringbuf_reserve(sizeof(*e));
	if (!e)
		return action;   /* ring full: the counter still has it */
	e->ts_ns = bpf_ktime_get_ns();
	e->hook = hook;
	e->reason = st->reason;
	e->proto = st->proto;
	e->flags = st->ct_flags;
	e->saddr = st->saddr;
	e->daddr = st->daddr;
	e->sport = st->sport;
	e->dport = st->dport;
	e->nat_saddr = st->nat_saddr;
	e->nat_daddr = st->nat_daddr;
	e->nat_sport = st->nat_sport;
	e->nat_dport = st->nat_dport;
	e->tun_peer = st->tun_peer;
	e->ifindex = skb->ifindex;
	e->pad = 0;
	events.ringbuf_submit(e, 0);
	return action;
}

/* cfg entry 0, or NULL when the datapath is not configured/enabled: then
 * every program passes everything (counted as PASS). */
static __always_inline struct node_cfg *node_conf(void)
{
	__u32 zero = 0;
	struct node_cfg *conf = cfg.lookup(&zero);

	if (!conf || !(conf->flags & CFG_F_ENABLED) || !conf->node_ip)
		return NULL;
	return conf;
}

/* An attach point's handler: decides the run, filling st (see verdict()). */
typedef int (*entry_handler)(struct __sk_buff *skb, const struct node_cfg *conf,
			     struct run_state *st);

/* The whole body of every entry function: the node's cfg (absent or
 * disabled: pass everything), the attach point's handler, then run_finish().
 * Always inlined with a constant handler, so the call is a direct one. */
static __always_inline int entry_run(struct __sk_buff *skb, __u8 hook, entry_handler handle)
{
	struct node_cfg *conf = node_conf();
	struct run_state st;
	int action;

	__builtin_memset(&st, 0, sizeof(st));
	if (!conf)
		action = verdict(&st, REASON_PASS, TC_ACT_OK);
	else
		action = handle(skb, conf, &st);
	return run_finish(skb, conf, hook, &st, action);
}

#endif /* NP_EVENTS_H */
