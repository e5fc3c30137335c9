/* TCP RST back to the sender of a segment no connection will take.
 *
 * A mid-flow segment (no SYN) that finds no conntrack entry and cannot be
 * given a backend belongs to a connection that is over: its backend went
 * and no other may take it (no backend left, or a frontend whose pick may
 * not change mid-flow). ICMP port unreachable is only a soft error to an
 * established Linux socket (tcp_v4_err keeps retrying), so the client
 * would hang until its retransmissions give up; a RST ends it at once,
 * as a host that does not know the connection answers (RFC 9293 3.10.7.1).
 * Like the ICMP refusals (lib/icmp.h) the packet itself becomes the answer.
 */
#ifndef NP_RESET_H
#define NP_RESET_H

#include "lib/compat.h"
#include "lib/parse.h"
#include "lib/csum.h"

struct tcp_rst_msg {
	struct iphdr  ip;
	struct tcphdr tcp;    /* no options */
};

/* TCP pseudo header + header, summed in one bpf_csum_diff call. */
struct tcp_rst_sum {
	__be32 saddr;
	__be32 daddr;
	__u8   zero;
	__u8   proto;
	__be16 len;
	struct tcphdr tcp;
};

/* A TCP segment without SYN: part of a connection this node never saw open. */
static __always_inline int tcp_mid_flow(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && !(p->tcp_flags & TCPF_SYN);
}

#define TCP_RST_FRAME_LEN (ETH_HLEN + sizeof(struct tcp_rst_msg))

/* Rewrite the TCP segment p (as the client sent it, before any NAT) into
 * a RST from the address and port it was sent to, back to the L2
 * neighbour it came from. With ACK set the RST takes its sequence number
 * from the segment's acknowledgment; without, it acknowledges the segment
 * instead (RFC 9293's two reset forms). Returns 0 when the caller should
 * bpf_redirect() it out of the interface it arrived on. */
static __always_inline int tcp_reset_reply(struct __sk_buff *skb, const struct pkt *p)
{
	struct tcp_rst_sum s;
	struct tcp_rst_msg m;
	struct tcphdr th;
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];
	__u32 seg_len;
	__s64 sum;

	if (p->proto != IPPROTO_TCP || p->frag != FRAG_NONE || (p->tcp_flags & TCPF_RST))
		return -1;   /* never answer a RST with a RST */
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0)
		return -1;
	seg_len = p->ip_len - (p->l4_off - p->l3_off) - th.doff * 4;
	if (th.syn)
		seg_len++;
	if (th.fin)
		seg_len++;

	__builtin_memset(&s, 0, sizeof(s));
	s.tcp.source = p->dport;
	s.tcp.dest = p->sport;
	s.tcp.doff = sizeof(struct tcphdr) / 4;
	s.tcp.rst = 1;
	if (th.ack) {
		s.tcp.seq = th.ack_seq;
	} else {
		s.tcp.ack = 1;
		s.tcp.ack_seq = bpf_htonl(bpf_ntohl(th.seq) + seg_len);
	}
	s.saddr = p->daddr;
	s.daddr = p->saddr;
	s.proto = IPPROTO_TCP;
	s.len = bpf_htons(sizeof(struct tcphdr));
	sum = bpf_csum_diff(0, 0, (__be32 *)&s, sizeof(s), 0);
	s.tcp.check = csum_fold32((__u32)sum);

	__builtin_memset(&m, 0, sizeof(m));
	m.tcp = s.tcp;
	m.ip.version = 4;
	m.ip.ihl = 5;
	m.ip.tot_len = bpf_htons(sizeof(m));
	m.ip.frag_off = bpf_htons(IP_DF_BIT);
	m.ip.ttl = 64;
	m.ip.protocol = IPPROTO_TCP;
	m.ip.saddr = p->daddr;
	m.ip.daddr = p->saddr;
	m.ip.check = ipv4_hdr_csum(&m.ip);

	if (bpf_skb_change_tail(skb, TCP_RST_FRAME_LEN, 0) < 0)
		return -1;
	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &m, sizeof(m), 0);
}

#endif /* NP_RESET_H */
