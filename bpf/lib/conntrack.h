/* Conntrack: one normalised entry per connection and NAT leg.
 *
 * Timeouts are Calico's defaults. An entry idle longer than its timeout is
 * treated as absent and deleted on lookup, so correctness never depends on
 * the user-space GC (which applies the same rules, ebpf_nodeport/datapath.py,
 * run every few seconds by the lab's cleaner). A full LRU map evicts; the
 * plain-hash build drops a new connection that does not fit
 * (REASON_DROP_CT_FULL), nothing of it left behind (maps.h).
 */
#ifndef NP_CONNTRACK_H
#define NP_CONNTRACK_H

#include "lib/maps.h"
#include "lib/parse.h"

#define SEC_NS 1000000000ULL

#ifndef CT_TIMEOUT_TCP_SYN
#define CT_TIMEOUT_TCP_SYN  (20 * SEC_NS)    /* handshake not complete */
#endif
#ifndef CT_TIMEOUT_TCP_EST
#define CT_TIMEOUT_TCP_EST  (3600 * SEC_NS)  /* SYN from both sides and an ACK */
#endif
#ifndef CT_TIMEOUT_TCP_FIN
#define CT_TIMEOUT_TCP_FIN  (30 * SEC_NS)    /* FIN from both sides */
#endif
#ifndef CT_TIMEOUT_TCP_RST
#define CT_TIMEOUT_TCP_RST  (40 * SEC_NS)    /* RST from either side */
#endif
#ifndef CT_TIMEOUT_UDP
#define CT_TIMEOUT_UDP      (60 * SEC_NS)
#endif
#ifndef CT_TIMEOUT_ICMP
#define CT_TIMEOUT_ICMP     (5 * SEC_NS)
#endif
#ifndef CT_TIMEOUT_OTHER
#define CT_TIMEOUT_OTHER    (600 * SEC_NS)
#endif

/* Build the normalised key; *from_a tells whether the packet's source is side a. */
static __always_inline void ct_key_make(struct ct_key *k, __be32 saddr, __be16 sport,
					__be32 daddr, __be16 dport, __u8 proto, int *from_a)
{
	__u32 s = bpf_ntohl(saddr), d = bpf_ntohl(daddr);
	int a = s < d || (s == d && bpf_ntohs(sport) <= bpf_ntohs(dport));

	__builtin_memset(k, 0, sizeof(*k));
	k->proto = proto;
	if (a) {
		k->addr_a = saddr; k->port_a = sport;
		k->addr_b = daddr; k->port_b = dport;
	} else {
		k->addr_a = daddr; k->port_a = dport;
		k->addr_b = saddr; k->port_b = sport;
	}
	*from_a = a;
}

/* Did this packet come from the connection's client? */
static __always_inline int ct_from_client(const struct ct_value *v, int from_a)
{
	return (v->flags & CT_F_CLIENT_IS_B) ? !from_a : from_a;
}

/* The ingress node of a DSR flow sees only the client's half of the
 * connection: judge the TCP state on that half alone. */
static __always_inline int ct_one_sided(const struct ct_value *v)
{
	return (v->flags & CT_F_DSR) && !(v->flags & CT_F_FROM_TUNNEL);
}

static __always_inline __u64 ct_timeout(const struct ct_value *v, __u8 proto)
{
	__u8 client, server;

	if (proto == IPPROTO_UDP)
		return CT_TIMEOUT_UDP;
	if (proto == IPPROTO_ICMP)
		return CT_TIMEOUT_ICMP;
	if (proto != IPPROTO_TCP)
		return CT_TIMEOUT_OTHER;

	if (v->flags & CT_F_CLIENT_IS_B) {
		client = v->tcp_b; server = v->tcp_a;
	} else {
		client = v->tcp_a; server = v->tcp_b;
	}
	if ((client | server) & TCPF_RST)
		return CT_TIMEOUT_TCP_RST;
	if (ct_one_sided(v)) {
		if (client & TCPF_FIN)
			return CT_TIMEOUT_TCP_FIN;
		if ((client & TCPF_SYN) && (client & TCPF_ACK))
			return CT_TIMEOUT_TCP_EST;
		return CT_TIMEOUT_TCP_SYN;
	}
	if ((client & TCPF_FIN) && (server & TCPF_FIN))
		return CT_TIMEOUT_TCP_FIN;
	if ((client & TCPF_SYN) && (server & TCPF_SYN) && ((client | server) & TCPF_ACK))
		return CT_TIMEOUT_TCP_EST;
	return CT_TIMEOUT_TCP_SYN;
}

/* A TCP SYN without ACK: the first packet of a connection (or its retransmit). */
static __always_inline int tcp_opening(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
}

/* A closed or closing TCP entry met by a fresh SYN: the client reuses the
 * 4-tuple for a new connection, which must get a fresh entry (and a fresh
 * backend choice), not inherit the dying one. */
static __always_inline int ct_reopened(const struct ct_value *v, const struct pkt *p)
{
	return tcp_opening(p) && ((v->tcp_a | v->tcp_b) & (TCPF_RST | TCPF_FIN)) != 0;
}

static __always_inline int ct_expired(const struct ct_value *v, __u8 proto, __u64 now)
{
	return now > v->last_seen_ns && now - v->last_seen_ns > ct_timeout(v, proto);
}

/* v, the entry found under k, as a lookup reports it: expired (or reopened)
 * entries are deleted and reported absent. A NAT_FWD entry is returned as
 * is: it lives and dies with its NAT_REV entry, which the caller looks up
 * next (the reply direction only ever refreshes the NAT_REV entry, so the
 * FWD timestamp alone would lie). Apart from ct_lookup() so a caller can
 * look at the raw entry before it acts on it (hep_handle: is the source
 * already checked?) without a second map lookup. */
static __always_inline struct ct_value *ct_validate(struct ct_key *k, struct ct_value *v,
						    struct pkt *p)
{
	if (!v || v->type == CT_NAT_FWD)
		return v;
	if (ct_expired(v, k->proto, pkt_now(p)) || ct_reopened(v, p)) {
		ct.delete(k);
		return NULL;
	}
	return v;
}

/* Look an entry up (see ct_validate). */
static __always_inline struct ct_value *ct_lookup(struct ct_key *k, struct pkt *p)
{
	return ct_validate(k, ct.lookup(k), p);
}

/* Does this hit prove that the packet's source passed from_hep's spoofing
 * check (not a local pod's address) when the connection was created? Only a
 * NAT_FWD entry of a client that is not a local pod and came in over eth0
 * or is the node itself does: from_hep creates those for a source that
 * passed the check, to_hep for the node's own address, and the packet comes
 * from that client. As Calico records the check in its entry; a packet with
 * a local pod's address as source can only match such an entry as its
 * client if that address passed the check at creation. Every other hit
 * (a reply, a pod's own connection, a tunnelled flow) proves nothing. */
static __always_inline int ct_src_checked(const struct ct_value *v, int from_a)
{
	return v->type == CT_NAT_FWD && !(v->flags & (CT_F_POD_CLIENT | CT_F_FROM_TUNNEL)) &&
	       ct_from_client(v, from_a);
}

/* Packets a (possibly GSO) skb stands for on the wire. */
static __always_inline __u64 skb_segs(struct __sk_buff *skb)
{
	__u32 segs = skb->gso_segs;

	return segs > 1 ? segs : 1;
}

/* Account one packet in the direction it travels. The u8 flag ORs race
 * benignly across CPUs (a lost bit is re-set by the next segment); the
 * counters use atomic adds. */
static __always_inline void ct_account(struct __sk_buff *skb, struct ct_value *v,
				       int from_a, struct pkt *p)
{
	__u64 segs = skb_segs(skb);

	v->last_seen_ns = pkt_now(p);
	if (from_a) {
		v->tcp_a |= p->tcp_flags;
		__sync_fetch_and_add(&v->packets_ab, segs);
		__sync_fetch_and_add(&v->bytes_ab, (__u64)p->ip_len);
	} else {
		v->tcp_b |= p->tcp_flags;
		__sync_fetch_and_add(&v->packets_ba, segs);
		__sync_fetch_and_add(&v->bytes_ba, (__u64)p->ip_len);
	}
}

/* A new entry: the connection (its client is the packet's source, from port
 * sport, to daddr:dport) and what the entry records about it. Filled by the
 * caller and passed by pointer, as Cilium passes struct ct_state: the
 * entry's fields are named at the call site instead of lined up in a row of
 * positional arguments. */
struct ct_new {
	__be32 daddr;
	__be32 nat_addr;      /* ct_value.nat_addr */
	__be32 tun_peer;      /* ct_value.tun_peer */
	__be16 sport;         /* the client's port in the key */
	__be16 dport;
	__be16 nat_port;      /* ct_value.nat_port */
	__be16 cl_port;       /* ct_value.cl_port */
	__u8   type;          /* CT_NORMAL / CT_NAT_FWD / CT_NAT_REV */
	__u8   flags;         /* CT_F_* (CT_F_CLIENT_IS_B is added from the key) */
};

static __always_inline void ct_fill(struct ct_value *v, struct __sk_buff *skb,
				    struct pkt *p, int from_a, const struct ct_new *n)
{
	__builtin_memset(v, 0, sizeof(*v));
	v->created_ns = pkt_now(p);
	v->last_seen_ns = v->created_ns;
	v->type = n->type;
	v->flags = n->flags | (from_a ? 0 : CT_F_CLIENT_IS_B);
	v->nat_addr = n->nat_addr;
	v->nat_port = n->nat_port;
	v->cl_port = n->cl_port;
	v->tun_peer = n->tun_peer;
	if (from_a) {
		v->tcp_a = p->tcp_flags;
		v->packets_ab = skb_segs(skb);
		v->bytes_ab = p->ip_len;
	} else {
		v->tcp_b = p->tcp_flags;
		v->packets_ba = skb_segs(skb);
		v->bytes_ba = p->ip_len;
	}
}

#define CT_REPLACE 0   /* ct_create: overwrite whatever holds the key */
#define CT_NEW_ONLY 1  /* ct_create: fail (-EEXIST) if the key is held */

/* Returned by a handler of a NAT_FWD hit that found its connection gone
 * (and deleted the FWD leg): the caller handles the packet as a new
 * connection. No verdict is a negative number. */
#define CT_RETRY_NEW -1000

/* Create the entry n describes for the connection whose client sent
 * packet p; the packet itself is accounted in it. 0, -EEXIST (CT_NEW_ONLY
 * and the key is held), or another negative errno when the map has no room
 * (-E2BIG: a plain hash never evicts; the caller drops the connection with
 * REASON_DROP_CT_FULL). Replacing a held key always fits. */
static __always_inline int ct_create(struct __sk_buff *skb, struct pkt *p,
				     const struct ct_new *n, int how)
{
	struct ct_key k;
	struct ct_value v;
	int from_a;

	ct_key_make(&k, p->saddr, n->sport, n->daddr, n->dport, p->proto, &from_a);
	ct_fill(&v, skb, p, from_a, n);
	return how == CT_NEW_ONLY ? ct.insert(&k, &v) : ct.update(&k, &v);
}

/* Undo a ct_create() of the entry n describes, client port sport: its
 * partner did not fit, and half a connection must not stay behind. */
static __always_inline void ct_uncreate(const struct pkt *p, const struct ct_new *n, __be16 sport)
{
	struct ct_key k;
	int from_a;

	ct_key_make(&k, p->saddr, sport, n->daddr, n->dport, p->proto, &from_a);
	ct.delete(&k);
}

/* Source-port collision (config.h): the entry n describes (n->sport aside)
 * under a client port drawn from the PSNAT range that no entry holds
 * (inserted only if absent, so two CPUs never share one). The entry is
 * flagged CT_F_PSNAT and keeps the client's own port for the replies.
 * Returns the new port (a __be16, never 0), 0 when every draw was taken,
 * or a negative errno when the map has no room (no further draw helps). */
static __always_inline int ct_create_psnat(struct __sk_buff *skb, struct pkt *p,
					   const struct ct_new *n)
{
	struct ct_key k;
	struct ct_value v;
	int from_a, rc;

#pragma unroll
	for (int i = 0; i < PSNAT_RETRIES; i++) {
		__be16 port = bpf_htons(PSNAT_START + bpf_get_prandom_u32() % PSNAT_LEN);

		ct_key_make(&k, p->saddr, port, n->daddr, n->dport, p->proto, &from_a);
		ct_fill(&v, skb, p, from_a, n);
		v.flags |= CT_F_PSNAT;
		v.cl_port = p->sport;
		rc = ct.insert(&k, &v);
		if (rc == 0)
			return port;
		if (rc != -EEXIST)
			return rc;
	}
	return 0;
}

#endif /* NP_CONNTRACK_H */
