/* Every map of the datapath and the structs they hold.
 *
 * Mirrored field by field by ctypes in ebpf_nodeport/abi.py (change both:
 * tests/bpf/test_abi.py compares the two through the compiled maps' BTF).
 * Addresses and ports are network byte order (__be32/__be16) because that
 * is how they sit in the packet; everything else is host order.
 * Maps are pinned under PIN_DIR by BCC itself (BPF_TABLE_PINNED): an existing
 * pin is reused, a missing one is created, so the CLI and bpftool can open
 * them by path and a datapath reload keeps its state. Before that the loader
 * (ebpf_nodeport/pins.py) keeps only pins whose BTF layout is this file's;
 * a changed struct has its entries carried over by field name, or its map
 * replaced (docs/datapath.md, "How pins are checked and upgraded").
 */
#ifndef NP_MAPS_H
#define NP_MAPS_H

#include "lib/config.h"
#include "lib/compat.h"
#include "lib/counters.h"

#define PIN(name) PIN_DIR "/" #name

/* ---- node configuration ---------------------------------------------- */

#define CFG_F_DSR     1  /* new external NodePort flows to remote backends use DSR */
#define CFG_F_TRACE   2  /* emit one event per packet to the ring buffer */
#define CFG_F_ENABLED 4  /* off: every program passes everything untouched */

struct node_cfg {
	__be32 node_ip;       /* this node's fabric address (NodePort frontend, tunnel endpoint) */
	__u32  host_ifindex;  /* eth0 of the node: where redirected packets leave */
	__u32  vni;           /* VXLAN network identifier we send and accept */
	__u16  tunnel_port;   /* VXLAN UDP port (host order) */
	__u16  fabric_mtu;    /* MTU of eth0: bound for encapsulated packets */
	__u32  flags;         /* CFG_F_* */
	__u32  sync_token;    /* user space only: changed by every sync() that writes the service
			       * maps, so a long-running programmer knows its copy is current */
};

/* Per-node settings written by ebpf_nodeport; read once per packet. */
BPF_TABLE_PINNED("array", __u32, struct node_cfg, cfg, 1, PIN(cfg));

struct node_info {
	__u32 flags;          /* reserved */
};

/* Known node addresses: the only accepted tunnel peers, and "from a node" test. */
BPF_TABLE_PINNED("hash", __be32, struct node_info, nodes, MAX_NODES, PIN(nodes), BPF_F_NO_PREALLOC);

/* ---- routing of pod blocks -------------------------------------------- */

#define RT_F_LOCAL 1          /* the block is this node's */

struct route_key {
	__u32  prefixlen;     /* LPM trie key: prefix length first */
	__be32 addr;
};

struct route_info {
	__be32 node_ip;       /* node hosting the block */
	__u32  flags;         /* RT_F_* */
};

/* Pod blocks -> hosting node: where to tunnel a backend, is a source a local pod. */
BPF_TABLE_PINNED("lpm_trie", struct route_key, struct route_info, routes, MAX_ROUTES, PIN(routes), BPF_F_NO_PREALLOC);

/* Client CIDRs that keep Tunnel behaviour when the node is in DSR mode. */
BPF_TABLE_PINNED("lpm_trie", struct route_key, __u32, dsr_optout, MAX_DSR_OPTOUT, PIN(dsr_optout), BPF_F_NO_PREALLOC);

/* ---- services ----------------------------------------------------------- */

#define FE_F_NODEPORT  1
#define FE_F_CLUSTERIP 2
#define FE_F_ETP_LOCAL 4      /* externalTrafficPolicy Local: clients from outside get local backends only */
#define FE_F_ITP_LOCAL 8      /* internalTrafficPolicy Local: pods get backends on their own node only */
#define FE_F_EXTERNAL  0x100  /* a LoadBalancer ingress or external IP (lib/lb.h) */
#define FE_F_LB_IP     0x200  /* ... the LoadBalancer ingress: loadBalancerSourceRanges apply */
#define FE_F_LB_OPTS   0x400  /* the service has an lb_svc entry (ranges, affinity, maglev) */

struct fe_key {
	__be32 addr;          /* frontend address; 0 = NodePort on any node address */
	__be16 port;
	__u8   proto;         /* IPPROTO_TCP / IPPROTO_UDP */
	__u8   pad;
};

struct fe_value {
	__u32 svc_id;         /* key into nat_be */
	__u16 count;          /* backends at ordinals 0..count-1 */
	__u16 local_count;    /* the first local_count of them are on this node */
	__u32 flags;          /* FE_F_* */
};

/* Service frontends: (ClusterIP or NodePort wildcard, port, proto) -> service. */
BPF_TABLE_PINNED("hash", struct fe_key, struct fe_value, nat_fe, MAX_SERVICES, PIN(nat_fe), BPF_F_NO_PREALLOC);

struct be_key {
	__u32 svc_id;
	__u32 ordinal;
};

struct be_value {
	__be32 addr;
	__be16 port;
	__u16  pad;
};

/* Service backends: (service, ordinal) -> endpoint address and port. */
BPF_TABLE_PINNED("hash", struct be_key, struct be_value, nat_be, MAX_BACKENDS, PIN(nat_be), BPF_F_NO_PREALLOC);

struct svc_meta {
	char name[64];        /* "namespace/name:port/proto" */
};

/* Service names for dumps only: the datapath never reads it. */
BPF_TABLE_PINNED("hash", __u32, struct svc_meta, svc_meta, MAX_SERVICES, PIN(svc_meta), BPF_F_NO_PREALLOC);

/* ---- conntrack -------------------------------------------------------------- */

#define CT_NORMAL  0          /* tracked, no NAT on this node (backend node of a tunnelled flow) */
#define CT_NAT_FWD 1          /* (client, frontend): nat = backend. On a backend node (FROM_TUNNEL):
			       * (client, ingress node:NodePort) of a flow whose port it replaced */
#define CT_NAT_REV 2          /* (client, backend): nat = frontend; holds state and counters */

#define CT_F_TUNNEL       1   /* the flow crosses the tunnel to/from tun_peer */
#define CT_F_DSR          2   /* replies go straight to the client */
#define CT_F_FROM_TUNNEL  4   /* created by decap on the backend node */
#define CT_F_NODEPORT     8   /* frontend was a NodePort */
#define CT_F_CLUSTERIP   16   /* frontend was a ClusterIP */
#define CT_F_CLIENT_IS_B 32   /* the client is side b of the key */
#define CT_F_POD_CLIENT  64   /* client is a local pod: reverse NAT happens in to_wep */
#define CT_F_PSNAT      128   /* the client's port was replaced (source-port collision): see cl_port */

/* Normalised: (addr_a, port_a) <= (addr_b, port_b) as host-order numbers,
 * so both directions of a connection find the same entry. */
struct ct_key {
	__be32 addr_a;
	__be32 addr_b;
	__be16 port_a;
	__be16 port_b;
	__u8   proto;
	__u8   pad[3];
};

struct ct_value {
	__u64  created_ns;    /* CLOCK_MONOTONIC (coarse: one tick) at creation */
	__u64  last_seen_ns;  /* updated on every packet */
	__u8   type;          /* CT_NORMAL / CT_NAT_FWD / CT_NAT_REV */
	__u8   flags;         /* CT_F_* */
	__u8   tcp_a;         /* TCP flags seen from side a (SYN/FIN/RST/ACK ORed) */
	__u8   tcp_b;         /* same, from side b */
	__be32 nat_addr;      /* FWD: backend; REV: frontend; NORMAL from tunnel: frontend */
	__be16 nat_port;
	__be16 cl_port;       /* CT_F_PSNAT only: FWD = the port the client has toward the backend;
			       * REV/NORMAL = the client's own port (replies get it back); else 0 */
	__be32 tun_peer;      /* node the flow is tunnelled to/from, 0 = none */
	__u64  packets_ab;    /* from side a to side b */
	__u64  packets_ba;
	__u64  bytes_ab;      /* IP total length (inner packet when tunnelled) */
	__u64  bytes_ba;
};

/* Connections, both directions in one normalised entry. A plain preallocated
 * hash, as Calico's: an insert pops one element from its CPU's free list, so
 * no insert waits (an LRU refills a CPU's list 128 elements at a time from a
 * common list, and ~1% of its inserts cost tens of us once entries have been
 * deleted), and a full map refuses a new connection (DROP_CT_FULL) rather
 * than evict a live one. Closed connections hold their entries for the FIN
 * timeout until the lab's cleaner (netns_lab/apps/ctclean.py) deletes them,
 * hence Calico's size: 512000 entries take ~6,400 new connections/s sustained.
 * CT_MAP_TYPE "lru_hash" builds the LRU it was before (docs/datapath.md). */
#ifndef CT_MAP_TYPE
#define CT_MAP_TYPE "hash"
#endif
#ifndef CT_MAP_FLAGS
#define CT_MAP_FLAGS 0
#endif
BPF_TABLE_PINNED(CT_MAP_TYPE, struct ct_key, struct ct_value, ct, MAX_CT, PIN(ct), CT_MAP_FLAGS);

/* ---- the conntrack clock -------------------------------------------------- */

struct ct_clock_cache {
	__u64 jiffies;        /* bpf_jiffies64() when ns was read */
	__u64 ns;             /* ct_clock_ns() then */
};

/* Per CPU: the conntrack clock as last read and the jiffy it was read in (parse.h pkt_now).
 * The coarse clock only moves on a tick, which is when jiffies moves, so a run in the same
 * jiffy reuses the reading: bpf_jiffies64() is inlined by the verifier, the clock helper is
 * a call (31-40 ns here, docs/bench.md Round 2). */
BPF_TABLE_PINNED("percpu_array", __u32, struct ct_clock_cache, ct_clock, 1, PIN(ct_clock));

/* ---- observability -------------------------------------------------------- */

/* Packets per (hook, reason): exactly one increment per program run. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, counters, N_HOOKS * MAX_REASONS, PIN(counters));

struct event {
	__u64  ts_ns;
	__u8   hook;          /* HOOK_* */
	__u8   reason;        /* REASON_* */
	__u8   proto;
	__u8   flags;         /* CT_F_* of the entry involved, 0 if none */
	__be32 saddr;         /* as the packet arrived (inner addresses when it was tunnelled) */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__be32 nat_saddr;     /* as it left */
	__be32 nat_daddr;
	__be16 nat_sport;
	__be16 nat_dport;
	__be32 tun_peer;      /* outer peer when encapsulated/decapsulated, else 0 */
	__u32  ifindex;       /* skb->ifindex */
	__u32  pad;
};

/* BCC has no pinned ring-buffer macro: same layout as BPF_RINGBUF_OUTPUT,
 * with the pin path in the section name like BPF_TABLE_PINNED. */
#define BPF_RINGBUF_PINNED(_name, _bytes, _pinned)                             \
	struct _name##_table_t {                                               \
		int key;                                                       \
		u32 leaf;                                                      \
		int (*ringbuf_output)(void *, u64, u64);                       \
		void *(*ringbuf_reserve)(u64);                                 \
		void (*ringbuf_discard)(void *, u64);                          \
		void (*ringbuf_submit)(void *, u64);                           \
		u32 max_entries;                                               \
	};                                                                     \
	__attribute__((section("maps/ringbuf:" _pinned)))                      \
	struct _name##_table_t _name = { .max_entries = (_bytes) }

/* Per-packet decisions for `netns-lab trace`, only when CFG_F_TRACE is set. */
BPF_RINGBUF_PINNED(events, EVENTS_BYTES, PIN(events));

#endif /* NP_MAPS_H */
