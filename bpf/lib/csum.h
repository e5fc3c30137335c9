/* Checksum-correct header rewrites.
 *
 * Every field change goes through bpf_l3_csum_replace / bpf_l4_csum_replace
 * with the old and new value, never a recompute: that is what keeps
 * CHECKSUM_PARTIAL packets (pseudo-header sum only, payload summed later by
 * the stack or the NIC) and CHECKSUM_COMPLETE packets right. Addresses are
 * part of the L4 pseudo-header, hence BPF_F_PSEUDO_HDR on them. A UDP
 * checksum of 0 means "none" and must stay 0: BPF_F_MARK_MANGLED_0.
 */
#ifndef NP_CSUM_H
#define NP_CSUM_H

#include "lib/compat.h"
#include "lib/parse.h"

#define IP_CSUM_OFF   offsetof(struct iphdr, check)
#define IP_SADDR_OFF  offsetof(struct iphdr, saddr)
#define IP_DADDR_OFF  offsetof(struct iphdr, daddr)
#define IP_TTL_OFF    offsetof(struct iphdr, ttl)

/* Fold a 32-bit one's complement sum into the 16-bit checksum field. */
static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Checksum of a 20-byte IPv4 header built on the stack (check field zero). */
static __always_inline __u16 ipv4_hdr_csum(struct iphdr *ip)
{
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0);

	return csum_fold32((__u32)sum);
}

/* Offset of the L4 checksum field, or -1 when the packet has none we track. */
static __always_inline int l4_csum_off(const struct pkt *p)
{
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

/* Rewrite the source (src=1) or destination address and port. */
static __always_inline int rewrite_l3l4(struct __sk_buff *skb, struct pkt *p, int src,
					__be32 new_addr, __be16 new_port)
{
	__be32 old_addr = src ? p->saddr : p->daddr;
	__be16 old_port = src ? p->sport : p->dport;
	__u32 addr_off = p->l3_off + (src ? IP_SADDR_OFF : IP_DADDR_OFF);
	__u32 port_off = p->l4_off + (src ? offsetof(struct udphdr, source)
					  : offsetof(struct udphdr, dest));
	int csum_off = l4_csum_off(p);
	__u64 l4f = l4_csum_flags(p);

	if (old_addr != new_addr) {
		if (csum_off >= 0 &&
		    bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
					l4f | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, p->l3_off + IP_CSUM_OFF, old_addr, new_addr,
					sizeof(new_addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0) < 0)
			return -1;
		if (src)
			p->saddr = new_addr;
		else
			p->daddr = new_addr;
	}
	/* TCP and UDP keep their ports at the same offsets. */
	if (old_port != new_port && p->has_ports) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
					l4f | sizeof(new_port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
			return -1;
		if (src)
			p->sport = new_port;
		else
			p->dport = new_port;
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
	__be16 old_w, new_w;
	__u8 ttl = p->ttl;

	if (ttl <= 1)
		return TTL_EXPIRED;
	/* TTL shares a 16-bit checksum word with the protocol byte. */
	old_w = bpf_htons(((__u16)ttl << 8) | p->proto);
	new_w = bpf_htons(((__u16)(ttl - 1) << 8) | p->proto);
	if (bpf_l3_csum_replace(skb, p->l3_off + IP_CSUM_OFF, old_w, new_w, sizeof(new_w)) < 0)
		return TTL_FAIL;
	ttl--;
	if (bpf_skb_store_bytes(skb, p->l3_off + IP_TTL_OFF, &ttl, 1, 0) < 0)
		return TTL_FAIL;
	p->ttl = ttl;
	return TTL_OK;
}

#endif /* NP_CSUM_H */
