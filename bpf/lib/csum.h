/* Checksum-correct header rewrites.
 *
 * The L4 checksum goes through bpf_l4_csum_replace with the old and new
 * value, never a recompute: only the kernel knows whether the skb carries a
 * full checksum or just the pseudo-header part (CHECKSUM_PARTIAL, payload
 * summed later by the stack or the NIC), and it keeps skb->csum right for
 * CHECKSUM_COMPLETE. Addresses are part of the pseudo-header, hence
 * BPF_F_PSEUDO_HDR on them. A UDP checksum of 0 means "none" and must stay 0:
 * BPF_F_MARK_MANGLED_0. The IPv4 header checksum always covers the whole
 * header and nothing else, so it is updated by arithmetic (RFC 1624) and
 * written in place with the fields, as are the fields themselves: a helper
 * call per store measured three times the cost of the arithmetic. A change
 * and its checksum update cancel in the header's one's complement sum, so
 * skb->csum stays valid either way.
 */
#ifndef NP_CSUM_H
#define NP_CSUM_H

#include "lib/compat.h"
#include "lib/parse.h"

#define IP_CSUM_OFF   offsetof(struct iphdr, check)
#define IP_SADDR_OFF  offsetof(struct iphdr, saddr)
#define IP_DADDR_OFF  offsetof(struct iphdr, daddr)

/* Fold a 32-bit one's complement sum into the 16-bit checksum field. */
static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Checksum of a 20-byte IPv4 header built on the stack (check field zero). */
static __always_inline __u16 ipv4_hdr_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < sizeof(*ip) / 2; i++)
		sum += w[i];
	return csum_fold32(sum);
}

/* RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for a 32-bit field (as stored). */
static __always_inline __u16 csum_replace32(__u16 check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~from + (__u16)~(from >> 16);
	sum += (__u16)to + (__u16)(to >> 16);
	return csum_fold32(sum);
}

/* The same for a 16-bit field. */
static __always_inline __u16 csum_replace16(__u16 check, __u16 from, __u16 to)
{
	return csum_fold32((__u32)(__u16)~check + (__u16)~from + to);
}

/* Offset of the L4 checksum field, or -1 when the packet has none we track
 * (a later fragment has no L4 header: its first fragment's checksum covers it). */
static __always_inline int l4_csum_off(const struct pkt *p)
{
	if (p->frag == FRAG_LATER)
		return -1;
	if (p->proto == IPPROTO_TCP)
		return p->l4_off + offsetof(struct tcphdr, check);
	if (p->proto == IPPROTO_UDP)
		return p->l4_off + offsetof(struct udphdr, check);
	return -1;
}

static __always_inline __u64 l4_csum_flags(const struct pkt *p)
{
	return p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* The one's complement class of a sum of a few 16-bit words (0 and 0xffff are
 * both zero): what two checksum values are compared by. */
static __always_inline __u32 csum_class(__u32 x)
{
	x = (x & 0xffff) + (x >> 16);
	x = (x & 0xffff) + (x >> 16);
	return x == 0xffff ? 0 : x;
}

/* How a TCP/UDP checksum field changed by a 32-bit pseudo-header replacement
 * (from -> to) is to be read, told by the kernel's own update of it. */
#define L4_FULL      0   /* a full checksum: the field went down by the change */
#define L4_PARTIAL   1   /* CHECKSUM_PARTIAL: the field holds the pseudo-header sum, went up */
#define L4_UNKNOWN   2   /* no telling (the change sums to zero): ask the helper again */
#define L4_NONE      3   /* a UDP checksum of 0 ("none"): left alone, and so is all else */

/* bpf_l4_csum_replace() with BPF_F_PSEUDO_HDR updates the field the way the
 * skb's ip_summed says, which a program cannot read: for CHECKSUM_PARTIAL
 * the field (the pseudo-header sum) goes up by the change d, otherwise (a full
 * checksum) down by d. Field before (f0) and after (f1) tell which, exactly,
 * whenever d is not zero mod 0xffff (the two results then differ). */
static __always_inline int l4_csum_kind(__u16 f0, __u16 f1, __u32 from, __u32 to, int udp)
{
	__u32 d = csum_class((__u16)~from + (__u16)~(from >> 16) + (__u16)to + (__u16)(to >> 16));
	__u32 c0 = csum_class(f0), c1 = csum_class(f1);

	if (udp && !f0)
		return L4_NONE;
	if (!d)
		return L4_UNKNOWN;
	if (c1 == csum_class(c0 + 0xffff - d))
		return L4_FULL;
	if (c1 == csum_class(c0 + d))
		return L4_PARTIAL;
	return L4_UNKNOWN;
}

/* bpf_l4_csum_replace(skb, off, from, to, [BPF_F_MARK_MANGLED_0 |] 2) on a full
 * checksum, as the kernel computes it (inet_proto_csum_replace2, csum_fold), so
 * the bytes are the helper's own: ~(~check + ~from + to), never 0xffff from the
 * arithmetic, and a UDP result of 0 sent as 0xffff (0 would mean "none"). */
static __always_inline __u16 l4_csum_replace16(__u16 check, __u16 from, __u16 to, int udp)
{
	/* + 0xffff (zero) keeps the sum non-zero: the fold then lands in 1..0xffff, as csum_fold's */
	__u32 sum = (__u16)~check + (__u16)~from + (__u32)to + 0xffff;
	__u16 r;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	r = (__u16)~sum;
	return udp && !r ? 0xffff : r;
}

/* Rewrite the source (src=1) or destination address and port. On an error
 * the packet may be half rewritten: callers drop it.
 *
 * One L4 checksum helper call where the address changes (it alone knows
 * CHECKSUM_PARTIAL from a full checksum, and keeps skb->csum of a
 * CHECKSUM_COMPLETE skb right); the port's update is then arithmetic written in
 * place, for a full checksum only (a partial one does not cover the ports yet),
 * told apart by how the helper changed the field (l4_csum_kind). The port's
 * helper call stays where that cannot tell, or no address changes. */
static __always_inline int rewrite_l3l4(struct __sk_buff *skb, struct pkt *p, int src,
					__be32 new_addr, __be16 new_port)
{
	__be32 old_addr = src ? p->saddr : p->daddr;
	__be16 old_port = src ? p->sport : p->dport;
	int addr_changed = old_addr != new_addr;
	int port_changed = old_port != new_port && p->has_ports && p->frag != FRAG_LATER;
	int csum_off = l4_csum_off(p);
	int udp = p->proto == IPPROTO_UDP;
	__u64 l4f = l4_csum_flags(p);
	int kind = L4_UNKNOWN;
	struct iphdr *ip;
	__be16 *ports;
	__u16 *check;
	__u16 f0 = 0;

	/* Helpers first: they move packet data, so pointers are taken after. */
	if (addr_changed && csum_off >= 0) {
		if (port_changed) {
			check = pkt_ptr(skb, csum_off, sizeof(*check));
			if (!check)
				return -1;
			f0 = *check;
		}
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
					l4f | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
			return -1;
		if (port_changed) {
			check = pkt_ptr(skb, csum_off, sizeof(*check));
			if (!check)
				return -1;
			kind = l4_csum_kind(f0, *check, old_addr, new_addr, udp);
		}
	}
	if (port_changed && kind == L4_UNKNOWN &&
	    bpf_l4_csum_replace(skb, csum_off, old_port, new_port, l4f | sizeof(new_port)) < 0)
		return -1;
	if (addr_changed) {
		ip = pkt_ptr(skb, p->l3_off, sizeof(*ip));
		if (!ip)
			return -1;
		ip->check = csum_replace32(ip->check, old_addr, new_addr);
		if (src) {
			ip->saddr = new_addr;
			p->saddr = new_addr;
		} else {
			ip->daddr = new_addr;
			p->daddr = new_addr;
		}
	}
	if (!port_changed && p->frag == FRAG_LATER) {
		/* no header to write: the flow's ports are what the packet "has" now */
		if (src)
			p->sport = new_port;
		else
			p->dport = new_port;
	}
	if (port_changed) {
		if (kind == L4_FULL) {
			check = pkt_ptr(skb, csum_off, sizeof(*check));
			if (!check)
				return -1;
			*check = l4_csum_replace16(*check, old_port, new_port, udp);
		}
		/* TCP and UDP keep their ports at the same offsets: source, dest. */
		ports = pkt_ptr(skb, p->l4_off, 2 * sizeof(__be16));
		if (!ports)
			return -1;
		if (src) {
			ports[0] = new_port;
			p->sport = new_port;
		} else {
			ports[1] = new_port;
			p->dport = new_port;
		}
	}
	return 0;
}

#define TTL_OK       0
#define TTL_EXPIRED  1
#define TTL_FAIL    -1

/* We forward this packet ourselves (redirect), so we are the router that
 * must decrement TTL; at 1 it would reach 0 and must not leave. */
static __always_inline int ttl_decrement(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr *ip;
	__be16 old_w, new_w;
	__u8 ttl = p->ttl;

	if (ttl <= 1)
		return TTL_EXPIRED;
	ip = pkt_ptr(skb, p->l3_off, sizeof(*ip));
	if (!ip)
		return TTL_FAIL;
	/* TTL shares a 16-bit checksum word with the protocol byte. */
	old_w = bpf_htons(((__u16)ttl << 8) | p->proto);
	new_w = bpf_htons(((__u16)(ttl - 1) << 8) | p->proto);
	ip->check = csum_replace16(ip->check, old_w, new_w);
	ip->ttl = --ttl;
	p->ttl = ttl;
	return TTL_OK;
}

#endif /* NP_CSUM_H */
