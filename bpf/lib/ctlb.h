/* Connect-time load balancing: the maps only the cgroup sock_addr programs
 * (bpf/connect.c) use, next to the node's service maps they read.
 *
 * A socket that connects (or sends) to a frontend gets a backend once, in
 * its own address, so its packets need no NAT at all. What the application
 * must not see changed is restored from ctlb_nat: the peer getpeername()
 * reports, and the source recvmsg() reports of a UDP reply.
 */
#ifndef NP_CTLB_H
#define NP_CTLB_H

#include "lib/maps.h"

#ifndef MAX_CTLB
#define MAX_CTLB 65536
#endif

#define CTLB_F_TCP 1          /* balance TCP sockets at connect() */
#define CTLB_F_UDP 2          /* balance UDP sockets at connect() and sendmsg() */

struct ctlb_cfg {
	__u64 netns_cookie;   /* the node's network namespace: the only one acted for */
	__u32 flags;          /* CTLB_F_*; 0 = programs attached but passing everything */
	__u32 pad;
};

/* Which sockets of the node's cgroup to balance, and for which namespace. */
BPF_TABLE_PINNED("array", __u32, struct ctlb_cfg, ctlb_cfg, 1, PIN(ctlb_cfg));

struct ctlb_key {
	__u64  cookie;        /* bpf_get_socket_cookie(): one socket */
	__be32 addr;          /* backend the socket was given */
	__be16 port;
	__u8   proto;
	__u8   pad;
};

struct ctlb_value {
	__be32 addr;          /* frontend the application asked for */
	__be16 port;
	__u16  pad;
};

/* (socket, backend) -> frontend, for getpeername() and UDP recvmsg();
 * LRU: an entry outlives its socket until evicted, harmlessly, since a new
 * socket has a new cookie. */
BPF_TABLE_PINNED("lru_hash", struct ctlb_key, struct ctlb_value, ctlb_nat, MAX_CTLB, PIN(ctlb_nat));

#endif /* NP_CTLB_H */
