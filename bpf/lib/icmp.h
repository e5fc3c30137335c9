/* ICMP "fragmentation needed" back to the sender of a packet that will not
 * fit once encapsulated, so that the client's PMTU discovery shrinks its
 * packets (as Calico does). The packet itself is turned into the ICMP
 * message: BPF cannot allocate a new skb. */
#ifndef NP_ICMP_H
#define NP_ICMP_H

#include "lib/compat.h"
#include "lib/parse.h"
#include "lib/csum.h"

/* What RFC 792 asks us to quote: the original IP header + 8 bytes. */
struct icmp_quote {
	struct iphdr ip;
	__u8 l4[8];
};

struct icmp_frag_msg {
	struct iphdr      ip;
	struct icmphdr    icmp;
	struct icmp_quote q;
};

#define ICMP_FRAG_FRAME_LEN (ETH_HLEN + sizeof(struct icmp_frag_msg))

/* Rewrite p (as the client sent it, before any NAT) into an ICMP
 * destination unreachable (code; mtu for frag-needed) from the address it was sent to, back to the L2 neighbour it
 * came from. Returns 0 when the caller should bpf_redirect() it out of the
 * interface it arrived on. Only option-less IP headers are quoted; with
 * options the caller just drops (counted the same). */
static __always_inline int icmp_dest_unreach(struct __sk_buff *skb, const struct pkt *p, __u8 code,
					     __u16 mtu)
{
	struct icmp_frag_msg m;
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];
	__s64 sum;

	if (p->l4_off - p->l3_off != sizeof(struct iphdr))
		return -1;
	__builtin_memset(&m, 0, sizeof(m));
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -1;
	if (bpf_skb_load_bytes(skb, p->l3_off, &m.q, sizeof(m.q)) < 0)
		return -1;
	if (bpf_skb_change_tail(skb, ICMP_FRAG_FRAME_LEN, 0) < 0)
		return -1;

	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);

	m.icmp.type = ICMP_DEST_UNREACH;
	m.icmp.code = code;
	m.icmp.un.frag.mtu = bpf_htons(mtu);   /* 0 for every code but frag-needed */
	sum = bpf_csum_diff(0, 0, (__be32 *)&m.icmp,
			    sizeof(m.icmp) + sizeof(m.q), 0);
	m.icmp.checksum = csum_fold32((__u32)sum);

	m.ip.version = 4;
	m.ip.ihl = 5;
	m.ip.tos = 0xc0;   /* IPTOS_PREC_INTERNETCONTROL, as Linux sends its ICMP errors */
	m.ip.tot_len = bpf_htons(sizeof(m));
	m.ip.ttl = 64;
	m.ip.protocol = IPPROTO_ICMP;
	m.ip.saddr = p->daddr;
	m.ip.daddr = p->saddr;
	m.ip.check = ipv4_hdr_csum(&m.ip);

	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &m, sizeof(m), 0);
}

static __always_inline int icmp_frag_needed(struct __sk_buff *skb, const struct pkt *p, __u16 mtu)
{
	return icmp_dest_unreach(skb, p, ICMP_FRAG_NEEDED, mtu);
}

/* Port unreachable from the frontend: a service with no backend for this
 * client is refused as kube-proxy's REJECT refuses it (Calico does the same). */
static __always_inline int icmp_port_unreach(struct __sk_buff *skb, const struct pkt *p)
{
	return icmp_dest_unreach(skb, p, ICMP_PORT_UNREACH, 0);
}

/* ---- ICMP errors about NATed flows ------------------------------------------
 *
 * A destination-unreachable or time-exceeded message quotes the packet that
 * caused it. The sender of that packet matches the quote against its own
 * socket, so an error about a NATed connection must be NATed like a packet of
 * the connection going the same way, quote included: the quoted header is
 * the *reverse* direction, so a source rewrite of the error is a destination
 * rewrite of the quote and vice versa (as Linux's nf_nat_icmp_reply_translation
 * does). This is what makes path-MTU discovery work through the tunnel.
 * Only quotes of option-less IPv4 TCP/UDP headers are translated.
 */

struct icmp_err {
	__u32  icmp_off;   /* ICMP header */
	__u32  q_l3;       /* quoted IPv4 header (IHL 5) */
	__u32  q_l4;       /* quoted TCP/UDP header */
	__u32  q_len;      /* quoted bytes present after the quoted IP header */
	__be32 q_saddr;
	__be32 q_daddr;
	__be16 q_sport;
	__be16 q_dport;
	__u8   q_proto;
	__u8   pad[3];
};

#define ICMP_ERR_OK    0
#define ICMP_ERR_NONE  1   /* not an error we translate: echo, short quote, options... */

static __always_inline int icmp_err_parse(struct __sk_buff *skb, const struct pkt *p,
					  struct icmp_err *e)
{
	struct iphdr q;
	__be16 qports[2];
	__u8 type;

	if (p->proto != IPPROTO_ICMP || p->frag != FRAG_NONE)
		return ICMP_ERR_NONE;
	/* ICMP header (8) + quoted IP header (20) + the 8 bytes RFC 792 requires. */
	if (p->ip_len < (p->l4_off - p->l3_off) + 8 + sizeof(q) + 8)
		return ICMP_ERR_NONE;
	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
		return ICMP_ERR_NONE;
	if (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED)
		return ICMP_ERR_NONE;
	e->icmp_off = p->l4_off;
	e->q_l3 = p->l4_off + 8;
	e->q_l4 = e->q_l3 + sizeof(q);
	e->q_len = p->ip_len - (p->l4_off - p->l3_off) - 8 - sizeof(q);
	if (bpf_skb_load_bytes(skb, e->q_l3, &q, sizeof(q)) < 0 ||
	    bpf_skb_load_bytes(skb, e->q_l4, qports, sizeof(qports)) < 0)
		return ICMP_ERR_NONE;
	if (q.version != 4 || q.ihl != 5 ||
	    (q.protocol != IPPROTO_TCP && q.protocol != IPPROTO_UDP))
		return ICMP_ERR_NONE;
	e->q_saddr = q.saddr;
	e->q_daddr = q.daddr;
	e->q_sport = qports[0];
	e->q_dport = qports[1];
	e->q_proto = q.protocol;
	return ICMP_ERR_OK;
}

/* After adjust_room(-50) the whole message moved up by the tunnel headers. */
static __always_inline void icmp_err_shift(struct icmp_err *e, __u32 by)
{
	e->icmp_off -= by;
	e->q_l3 -= by;
	e->q_l4 -= by;
}

/* Rewrite the quoted source (qsrc=1) or destination address and port.
 * Checksums, none of them recomputed:
 *  - quoted IP header: address + its own checksum change, which leaves the
 *    ICMP checksum (a sum over those bytes) unchanged;
 *  - quoted L4 checksum, when the quote contains it (always for UDP, for TCP
 *    when 18+ bytes are quoted): updated for address (pseudo-header) and port,
 *    and its own change carried into the ICMP checksum;
 *  - the port's change carried into the ICMP checksum.
 * No BPF_F_PSEUDO_HDR: the quoted fields are plain payload of the ICMP message. */
static __always_inline int icmp_err_rewrite_quote(struct __sk_buff *skb, struct icmp_err *e,
						  int qsrc, __be32 new_addr, __be16 new_port)
{
	__be32 old_addr = qsrc ? e->q_saddr : e->q_daddr;
	__be16 old_port = qsrc ? e->q_sport : e->q_dport;
	__u32 icmp_csum = e->icmp_off + offsetof(struct icmphdr, checksum);
	__u32 l4_csum = e->q_l4 + (e->q_proto == IPPROTO_UDP ? offsetof(struct udphdr, check)
							     : offsetof(struct tcphdr, check));
	int has_l4_csum = e->q_proto == IPPROTO_UDP || e->q_len >= offsetof(struct tcphdr, check) + 2;
	__be16 csum_old, csum_new;

	if (has_l4_csum) {
		if (bpf_skb_load_bytes(skb, l4_csum, &csum_old, sizeof(csum_old)) < 0)
			return -1;
		if (!(e->q_proto == IPPROTO_UDP && csum_old == 0)) {
			__u64 f = e->q_proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

			if (old_addr != new_addr &&
			    bpf_l4_csum_replace(skb, l4_csum, old_addr, new_addr, f | sizeof(new_addr)) < 0)
				return -1;
			if (old_port != new_port &&
			    bpf_l4_csum_replace(skb, l4_csum, old_port, new_port, f | sizeof(new_port)) < 0)
				return -1;
			if (bpf_skb_load_bytes(skb, l4_csum, &csum_new, sizeof(csum_new)) < 0)
				return -1;
			if (bpf_l4_csum_replace(skb, icmp_csum, csum_old, csum_new, sizeof(csum_new)) < 0)
				return -1;
		}
	}
	if (old_addr != new_addr) {
		if (bpf_l3_csum_replace(skb, e->q_l3 + IP_CSUM_OFF, old_addr, new_addr,
					sizeof(new_addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, e->q_l3 + (qsrc ? IP_SADDR_OFF : IP_DADDR_OFF),
					&new_addr, sizeof(new_addr), 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, icmp_csum, old_port, new_port, sizeof(new_port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, e->q_l4 + (qsrc ? offsetof(struct udphdr, source)
							   : offsetof(struct udphdr, dest)),
					&new_port, sizeof(new_port), 0) < 0)
			return -1;
	}
	if (qsrc) {
		e->q_saddr = new_addr;
		e->q_sport = new_port;
	} else {
		e->q_daddr = new_addr;
		e->q_dport = new_port;
	}
	return 0;
}

/* The error goes toward the client of a connection, as its replies do: its
 * source becomes fe (the address the client talks to) and the quote, the
 * client's own packet, gets fe back as its destination. */
static __always_inline int icmp_err_to_client(struct __sk_buff *skb, struct pkt *p,
					      struct icmp_err *e, __be32 fe_addr, __be16 fe_port)
{
	if (rewrite_l3l4(skb, p, 1, fe_addr, p->sport) < 0)
		return -1;
	return icmp_err_rewrite_quote(skb, e, 0, fe_addr, fe_port);
}

/* The error goes toward the backend, as requests do: destination becomes the
 * backend and the quote, a reply the backend sent, gets it back as source. */
static __always_inline int icmp_err_to_backend(struct __sk_buff *skb, struct pkt *p,
					       struct icmp_err *e, __be32 be_addr, __be16 be_port)
{
	if (rewrite_l3l4(skb, p, 0, be_addr, p->dport) < 0)
		return -1;
	return icmp_err_rewrite_quote(skb, e, 1, be_addr, be_port);
}

#endif /* NP_ICMP_H */
