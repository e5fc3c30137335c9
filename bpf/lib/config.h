/* Compile-time configuration of the datapath.
 *
 * Everything here can be overridden by the loader (or a test) with -D / a
 * #define placed before the headers: that is why each value sits in #ifndef.
 * Per-node runtime values (own address, mode flags) are NOT here: they live
 * in the `cfg` map so a mode switch needs no recompile.
 */
#ifndef NP_CONFIG_H
#define NP_CONFIG_H

/* Directory the maps are pinned in (one per lab node). BCC opens a map that
 * is already pinned there instead of creating it, so a reload keeps
 * conntrack and services. */
#ifndef PIN_DIR
#error "PIN_DIR must be defined by the loader (e.g. /sys/fs/bpf/netns-lab/<lab>/<node>)"
#endif

#ifndef MAX_NODES
#define MAX_NODES 256
#endif
#ifndef MAX_ROUTES
#define MAX_ROUTES 1024
#endif
#ifndef MAX_DSR_OPTOUT
#define MAX_DSR_OPTOUT 64
#endif
#ifndef MAX_SERVICES
#define MAX_SERVICES 65536
#endif
#ifndef MAX_BACKENDS
#define MAX_BACKENDS 262144
#endif
#ifndef MAX_CT
#define MAX_CT 512000   /* Calico's default conntrack size (BPFMapSizeConntrack) */
#endif
#ifndef MAX_REASONS
#define MAX_REASONS 32
#endif
#ifndef EVENTS_BYTES
#define EVENTS_BYTES (256 * 1024)
#endif

/* VXLAN: 4096 is the VNI Calico uses for its VXLAN pool; 4789 the IANA port. */
#ifndef TUNNEL_VNI
#define TUNNEL_VNI 4096
#endif
#ifndef TUNNEL_PORT
#define TUNNEL_PORT 4789
#endif

/* Outer IPv4 TTL of packets we encapsulate (Linux's default ip_default_ttl). */
#ifndef TUNNEL_TTL
#define TUNNEL_TTL 64
#endif

/* OR-ed into skb->mark of packets from_hep NATs or decapsulates and then
 * hands to the kernel (TC_ACT_OK). Netfilter on the node sees only that
 * direction (the reply is redirected past it), so its conntrack calls the
 * flow INVALID and a kube-proxy `--ctstate INVALID -j DROP` would kill it;
 * a raw-table `-m mark --mark SKB_MARK_BYPASS/SKB_MARK_BYPASS -j NOTRACK`
 * keyed on this bit lets such packets through, as Calico's "seen by BPF"
 * mark does. Value: Calico's 0x01000000 bit. */
#ifndef SKB_MARK_BYPASS
#define SKB_MARK_BYPASS 0x01000000
#endif

/* Source-port collision: a new connection whose (client address, port,
 * backend) is already another live connection's, e.g. the same client port
 * through two nodes' NodePorts to one pod, would be one 4-tuple to the pod.
 * It gets a client port drawn from this range instead (Felix's default
 * bpfPSNATPorts, 20000:29999), PSNAT_RETRIES draws at most. */
#ifndef PSNAT_START
#define PSNAT_START 20000
#endif
#ifndef PSNAT_LEN
#define PSNAT_LEN 10000
#endif
#ifndef PSNAT_RETRIES
#define PSNAT_RETRIES 3
#endif

/* Outer UDP source ports come from this range (RFC 7348 recommends the
 * dynamic range so that ECMP in the fabric can spread flows). */
#define TUNNEL_SPORT_BASE 49152
#define TUNNEL_SPORT_MASK 0x3fff

#endif /* NP_CONFIG_H */
