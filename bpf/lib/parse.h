/* Header parsing: Ethernet -> IPv4 (IHL-aware) -> TCP/UDP ports.
 *
 * Headers are read in place (direct packet access): a bpf_skb_load_bytes
 * copy costs a helper call per header, which measured more than the rest of
 * the parse together. A header not yet in the skb's linear part (possible
 * on GRO/GSO packets) is pulled in first, see pkt_ptr(). Everything is
 * validated before use, so a truncated or inconsistent packet is reported,
 * never rewritten. The bound is the enclosing packet, not the frame: bytes
 * past an IPv4 total length (Ethernet padding, or whatever trails a
 * datagram) belong to no header, and a tunnel's inner packet must end
 * inside the outer UDP datagram, not merely inside the skb.
 */
#ifndef NP_PARSE_H
#define NP_PARSE_H

#include "lib/compat.h"
#include "lib/maps.h"

/* Deepest offset a header read starts at: the inner TCP header of a
 * tunnelled packet with IPv4 options is at most 14 + 50 + 60. A constant
 * bound is also what lets the verifier accept variable offsets. */
#ifndef MAX_HDR_OFF
#define MAX_HDR_OFF 192
#endif

#define PARSE_OK         0
#define PARSE_NOT_IPV4   1   /* ARP, IPv6, ...: not ours, pass untouched */
#define PARSE_MALFORMED -1

#define FRAG_NONE  0
#define FRAG_FIRST 1   /* MF set, offset 0: carries the L4 header */
#define FRAG_LATER 2   /* offset > 0: no L4 header, cannot be matched to a flow */

/* TCP flags we track per direction in conntrack. */
#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10
#define TCPF_TRACKED (TCPF_FIN | TCPF_SYN | TCPF_RST | TCPF_ACK)

struct pkt {
	__u32  l3_off;     /* offset of the IPv4 header from the MAC header */
	__u32  l4_off;     /* l3_off + IHL * 4 */
	__u32  ip_len;     /* IPv4 total length */
	__u32  l4_end;     /* offset one past the L4 data: l3_off + ip_len, or the end of
			    * the UDP datagram when its length says it ends sooner */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;      /* 0 when !has_ports */
	__be16 dport;
	__u8   proto;
	__u8   tcp_flags;  /* TCPF_TRACKED bits of this segment */
	__u8   ttl;
	__u8   tos;
	__u8   frag;       /* FRAG_* */
	__u8   df;         /* IP DF bit set */
	__u8   has_ports;  /* ports known: TCP or UDP header present and valid, or (a later
			    * fragment) taken from its datagram's first fragment (lib/frags.h) */
	__u8   pad;
	__be16 ip_id;      /* IP identification: which datagram a fragment belongs to */
	__u16  pad2;
	__u64  now;        /* clock of this run, 0 until pkt_now() first reads it */
};

/* Pointer to len bytes at off in the packet, pulling them into the linear
 * part when they are not there yet; NULL when the packet is shorter. Any
 * helper that may move packet data (csum_replace, adjust_room, pull_data,
 * store_bytes) invalidates it: take a fresh one after such a call. */
/* skb->data and data_end loaded by an instruction that addresses the ctx
 * register itself: left to clang, `skb + offsetof(data_end)` may be kept in
 * a register (even spilled) across calls, and the verifier refuses any
 * access through a ctx pointer that is not the ctx itself. */
static __always_inline void *skb_field_ptr(struct __sk_buff *skb, const int off)
{
	__u64 v;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(v) : "r"(skb), "i"(off));
	return (void *)(long)v;
}
#define SKB_DATA(skb)     skb_field_ptr(skb, offsetof(struct __sk_buff, data))
#define SKB_DATA_END(skb) skb_field_ptr(skb, offsetof(struct __sk_buff, data_end))

static __always_inline void *pkt_ptr(struct __sk_buff *skb, __u32 off, const __u32 len)
{
	void *data, *end;

	if (off > MAX_HDR_OFF)
		return NULL;
	data = SKB_DATA(skb);
	end = SKB_DATA_END(skb);
	if (data + off + len <= end)
		return data + off;
	if (bpf_skb_pull_data(skb, off + len) < 0)
		return NULL;
	data = SKB_DATA(skb);
	end = SKB_DATA_END(skb);
	if (data + off + len > end)
		return NULL;
	return data + off;
}

/* The conntrack clock as of this jiffy: one helper call per jiffy and CPU
 * (ct_clock, maps.h), not per packet. The coarse clock changes only on a tick,
 * so the cached reading is the value a call would return, or (a run between the
 * tick's jiffies increment and its clock update) the previous tick's: never
 * ahead of user space's clock, at most a tick behind it, against timeouts of
 * 5 s and more. The fine clock (no coarse helper, before 5.11) moves between
 * ticks and user space reads it fine too: read per run there. */
static __always_inline __u64 ct_clock_now(void)
{
#ifdef HAVE_KTIME_COARSE
	__u32 zero = 0;
	struct ct_clock_cache *c = ct_clock.lookup(&zero);
	__u64 j = bpf_jiffies64();

	if (!c)
		return ct_clock_ns();
	if (c->jiffies != j) {
		c->ns = ct_clock_ns();   /* ns before jiffies: a nested run sees the pair or the old one */
		c->jiffies = j;
	}
	return c->ns;
#else
	return ct_clock_ns();
#endif
}

/* One clock read per program run, and the coarse clock (a tick, a few ms,
 * of resolution) where the kernel has it (ct_clock_ns, compat.h) since the
 * fine one costs twice as much here and the shortest conntrack timeout is 5 s.
 * Both are CLOCK_MONOTONIC, which is what user space compares entries against. */
static __always_inline __u64 pkt_now(struct pkt *p)
{
	if (!p->now)
		p->now = ct_clock_now();
	return p->now;
}

/* The TCP/UDP header after an IPv4 header of hlen bytes in a packet of tot
 * bytes (p->l4_off set): ports, TCP flags, and where a whole UDP datagram
 * ends. Other protocols have no ports: has_ports stays 0. */
static __always_inline int parse_ports(struct __sk_buff *skb, struct pkt *p, __u32 hlen, __u32 tot)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th;
		__u32 thlen;

		if (tot < hlen + sizeof(*th))
			return PARSE_MALFORMED;
		th = pkt_ptr(skb, p->l4_off, sizeof(*th));
		if (!th)
			return PARSE_MALFORMED;
		thlen = th->doff * 4;
		if (thlen < sizeof(*th) || hlen + thlen > tot)
			return PARSE_MALFORMED;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13] & TCPF_TRACKED;
		p->has_ports = 1;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh;
		__u32 ulen;

		if (tot < hlen + sizeof(*uh))
			return PARSE_MALFORMED;
		uh = pkt_ptr(skb, p->l4_off, sizeof(*uh));
		if (!uh)
			return PARSE_MALFORMED;
		ulen = bpf_ntohs(uh->len);
		if (ulen < sizeof(*uh))
			return PARSE_MALFORMED;
		/* A first fragment's UDP length covers the whole datagram, most
		 * of it in later fragments: only a whole datagram is bounded by it
		 * (IP payload past the UDP length is not part of the datagram). */
		if (p->frag == FRAG_NONE) {
			if (ulen > tot - hlen)
				return PARSE_MALFORMED;
			p->l4_end = p->l4_off + ulen;
		}
		p->sport = uh->source;
		p->dport = uh->dest;
		p->has_ports = 1;
	}
	return PARSE_OK;
}

/* Parse the IPv4 header at l3_off and the TCP/UDP header after it. The
 * packet must end by `end` (skb->len for the frame's own packet, the outer
 * datagram's end for a tunnelled one); every later read is bounded by its
 * own total length, so it never reaches into what follows it. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 l3_off, __u32 end,
				      struct pkt *p)
{
	struct iphdr *ip;
	__u32 hlen, tot;
	__u16 frag_off;

	p->now = 0;
	if (end > skb->len || l3_off + sizeof(*ip) > end)
		return PARSE_MALFORMED;
	ip = pkt_ptr(skb, l3_off, sizeof(*ip));
	if (!ip)
		return PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	/* tot_len may be shorter than what encloses it (Ethernet padding), never longer. */
	if (tot < hlen || l3_off + tot > end)
		return PARSE_MALFORMED;

	p->l3_off = l3_off;
	p->l4_off = l3_off + hlen;
	p->ip_len = tot;
	p->l4_end = l3_off + tot;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->ttl = ip->ttl;
	p->tos = ip->tos;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->has_ports = 0;
	p->pad = 0;
	p->ip_id = ip->id;
	p->pad2 = 0;

	frag_off = bpf_ntohs(ip->frag_off);
	p->df = !!(frag_off & IP_DF_BIT);
	if (frag_off & IP_OFFSET_MASK)
		p->frag = FRAG_LATER;
	else if (frag_off & IP_MF_BIT)
		p->frag = FRAG_FIRST;
	else
		p->frag = FRAG_NONE;
	if (p->frag == FRAG_LATER)
		return PARSE_OK;

	/* From here on `ip` may be stale: pkt_ptr() can pull. */
	return parse_ports(skb, p, hlen, tot);
}

/* Parse the frame from the MAC header: only IPv4 is ours. */
static __always_inline int parse_frame(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr *eth = pkt_ptr(skb, 0, sizeof(*eth));

	if (!eth)
		return PARSE_NOT_IPV4;   /* runt frame: nothing we could act on */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	return parse_ipv4(skb, ETH_HLEN, skb->len, p);
}

#endif /* NP_PARSE_H */
