/* IP fragments of service datagrams.
 *
 * Only a datagram's first fragment carries the ports a flow is matched by.
 * As Calico (and Cilium) do, the first fragment seen at a hook records its
 * ports under (source, destination, protocol, IP id); a later fragment that
 * finds them is matched and NATed like the first (addresses only: it has no
 * L4 header, and the first fragment's checksum update covers the whole
 * datagram). A later fragment arriving before its first one finds nothing
 * and passes untouched, as before. Entries are not removed on the last
 * fragment (fragments may be reordered): the LRU reclaims them.
 *
 * A DF-clear packet too big to encapsulate (a 1500-byte fragment from an
 * external client) cannot be split here (BPF makes no new packets); it is
 * DNATed and handed to the kernel marked SKB_MARK_ENCAP (+ DSR, + frontend
 * port in the low 16 bits): the kernel routes it toward the backend's node
 * over a route whose MTU leaves room for VXLAN (set by the lab in eBPF
 * mode), fragments it there, and to_hep encapsulates each piece as the mark
 * says.
 */
#ifndef NP_FRAGS_H
#define NP_FRAGS_H

#include "lib/maps.h"
#include "lib/parse.h"

#ifndef MAX_FRAGS
#define MAX_FRAGS 8192
#endif

#define SKB_MARK_ENCAP      0x02000000  /* to_hep: encapsulate toward the destination's node */
#define SKB_MARK_ENCAP_DSR  0x04000000  /* ... with the DSR flag */
#define SKB_MARK_ENCAP_PORT 0x0000ffff  /* ... and this frontend port (host order) */

struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;            /* IP identification */
	__u8   proto;
	__u8   pad;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

/* First fragments' ports, for the later fragments of the same datagram. */
BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag_ports, frags, MAX_FRAGS, PIN(frags));

/* Record a first fragment's ports, or give a later fragment its datagram's.
 * Returns 0 when p can be matched by ports, -1 for a later fragment whose
 * first fragment was not seen here. */
static __always_inline int frag_fill(struct pkt *p)
{
	struct frag_key k;
	struct frag_ports *fp, v;

	if (likely(p->frag == FRAG_NONE))   /* every packet passes here: nothing to build */
		return 0;
	k = (struct frag_key){ .saddr = p->saddr, .daddr = p->daddr, .id = p->ip_id,
			       .proto = p->proto, .pad = 0 };
	if (p->frag == FRAG_FIRST && p->has_ports) {
		v.sport = p->sport;
		v.dport = p->dport;
		frags.update(&k, &v);
		return 0;
	}
	if (p->frag != FRAG_LATER)
		return 0;
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return -1;
	fp = frags.lookup(&k);
	if (!fp)
		return -1;
	p->sport = fp->sport;
	p->dport = fp->dport;
	p->has_ports = 1;
	return 0;
}

/* Mark a DNATed, DF-clear packet too big to encapsulate for the kernel's
 * fragmentation and to_hep's encapsulation (see the top of this file). */
static __always_inline void frag_encap_mark(struct __sk_buff *skb, int dsr, __be16 fe_port)
{
	__u32 mark = skb->mark & ~(SKB_MARK_ENCAP | SKB_MARK_ENCAP_DSR | SKB_MARK_ENCAP_PORT);

	mark |= SKB_MARK_BYPASS | SKB_MARK_ENCAP | bpf_ntohs(fe_port);
	if (dsr)
		mark |= SKB_MARK_ENCAP_DSR;
	skb->mark = mark;
}

#endif /* NP_FRAGS_H */
