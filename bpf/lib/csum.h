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

/* Rewrite the source (src=1) or destination address and port. On an error
 * the packet may be half rewritten: callers drop it. */
static __always_inline int rewrite_l3l4(struct __sk_buff *skb, struct pkt *p, int src,
					__be32 new_addr, __be16 new_port)
{
	__be32 old_addr = src ? p->saddr : p->daddr;
	__be16 old_port = src ? p->sport : p->dport;
	int addr_changed = old_addr != new_addr;
	int port_changed = old_port != new_port && p->has_ports && p->frag != FRAG_LATER;
	int csum_off = l4_csum_off(p);
	__u64 l4f = l4_csum_flags(p);
	struct iphdr *ip;
	__be16 *ports;

	/* Helpers first: they move packet data, so pointers are taken after. */
	if (addr_changed && csum_off >= 0 &&
	    bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
				l4f | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
		return -1;
	if (port_changed &&
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
