/* VXLAN encapsulation written by the program itself (no vxlan device).
 *
 * Our VXLAN header reuses the first reserved 16 bits (VXLAN-GBP's group
 * policy ID) to carry the NodePort of the original frontend, and the flags
 * byte after it for VXH_F_DSR: the backend node needs both to send a DSR
 * reply from the frontend address (the outer source) and port.
 *
 *   byte 0: 0x08 (I: VNI valid)  byte 1: VXH_F_DSR  bytes 2-3: frontend port
 *   bytes 4-6: VNI               byte 7: 0
 */
#ifndef NP_TUNNEL_H
#define NP_TUNNEL_H

#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/nat.h"
#include "lib/icmp.h"

#define VXLAN_F_VNI 0x08
#define VXH_F_DSR   0x01

struct vxlan_np {
	__u8   flags;      /* VXLAN_F_VNI */
	__u8   np_flags;   /* VXH_F_* */
	__be16 fe_port;    /* NodePort of the frontend, 0 on replies */
	__be32 vni;        /* VNI << 8 */
};

/* Outer IPv4 + UDP + VXLAN + inner Ethernet: what adjust_room inserts. */
#define VXLAN_ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + \
			 sizeof(struct vxlan_np) + ETH_HLEN)

struct encap_hdr {
	struct iphdr    ip;    /* 0  */
	struct udphdr   udp;   /* 20 */
	struct vxlan_np vx;    /* 28 */
	struct ethhdr   eth;   /* 36, 14 bytes: 50 in all (+2 bytes struct padding) */
};

/* Would this packet exceed the fabric MTU once encapsulated? GSO packets
 * are segmented after us, with gso_size reduced by adjust_room, so only
 * single packets are checked. */
static __always_inline int encap_too_big(struct __sk_buff *skb, const struct node_cfg *conf,
					 const struct pkt *p)
{
	if (skb->gso_size)
		return 0;
	return p->ip_len + VXLAN_ENCAP_LEN > conf->fabric_mtu;
}

/* Wrap the packet (IPv4 header at ETH_HLEN) in VXLAN toward peer.
 * hash picks the outer UDP source port, so one flow keeps one port. */
static __always_inline int tunnel_encap(struct __sk_buff *skb, const struct node_cfg *conf,
					__be32 peer, __u8 np_flags, __be16 fe_port, __u32 hash,
					__u8 tos)
{
	struct encap_hdr h;
	struct ethhdr *eth;
	__u32 outer_len;
	void *at;

	__builtin_memset(&h, 0, sizeof(h));
	/* The inner Ethernet header is the frame's own as it arrived: nobody
	 * reads its MACs (the receiver strips it), keeping it costs nothing. */
	eth = pkt_ptr(skb, 0, ETH_HLEN);
	if (!eth)
		return -1;
	__builtin_memcpy(&h.eth, eth, ETH_HLEN);
	if (bpf_skb_adjust_room(skb, VXLAN_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
				BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN)) < 0)
		return -1;
	outer_len = skb->len - ETH_HLEN;

	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tos = tos;
	h.ip.tot_len = bpf_htons(outer_len);
	h.ip.id = 0;
	h.ip.frag_off = bpf_htons(IP_DF_BIT);   /* never fragment tunnel packets: the MTU is sized for them */
	h.ip.ttl = TUNNEL_TTL;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.saddr = conf->node_ip;
	h.ip.daddr = peer;
	h.ip.check = ipv4_hdr_csum(&h.ip);

	h.udp.source = bpf_htons(TUNNEL_SPORT_BASE | (hash & TUNNEL_SPORT_MASK));
	h.udp.dest = bpf_htons(conf->tunnel_port);
	h.udp.len = bpf_htons(outer_len - sizeof(struct iphdr));
	h.udp.check = 0;   /* allowed for UDP over IPv4; the inner packet has its own */

	h.vx.flags = VXLAN_F_VNI;
	h.vx.np_flags = np_flags;
	h.vx.fe_port = fe_port;
	h.vx.vni = bpf_htonl(conf->vni << 8);

	h.eth.h_proto = bpf_htons(ETH_P_IP);

	/* adjust_room made the room in the linear part: written in place. */
	at = pkt_ptr(skb, ETH_HLEN, VXLAN_ENCAP_LEN);
	if (!at)
		return -1;
	__builtin_memcpy(at, &h, VXLAN_ENCAP_LEN);
	return 0;
}

/* Strip outer IPv4 + UDP + VXLAN + inner Ethernet: the frame keeps the outer
 * Ethernet header (addressed to this node) with the inner IPv4 after it.
 * The inner packet `in` (and the ICMP error parsed from it, when e is not
 * NULL) moved up by the tunnel headers: their offsets are moved with it, so
 * a rewrite after the decap finds its headers. */
static __always_inline int tunnel_decap(struct __sk_buff *skb, struct pkt *in, struct icmp_err *e)
{
	if (bpf_skb_adjust_room(skb, -(__s32)VXLAN_ENCAP_LEN, BPF_ADJ_ROOM_MAC, 0) < 0)
		return -1;
	in->l3_off -= VXLAN_ENCAP_LEN;
	in->l4_off -= VXLAN_ENCAP_LEN;
	in->l4_end -= VXLAN_ENCAP_LEN;
	if (e)
		icmp_err_shift(e, VXLAN_ENCAP_LEN);
	return 0;
}

#endif /* NP_TUNNEL_H */
