/* BCC/kernel-header gaps, kept in one place so the rest reads like plain C. */
#ifndef NP_COMPAT_H
#define NP_COMPAT_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

/* bcc 0.26's helpers.h declares bpf_redirect_neigh with 3 arguments; the
 * kernel helper takes 4 (ifindex, params, plen, flags). Call it through our
 * own correctly typed pointer. */
static long (*redirect_neigh4)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* Byte order without libc: the BPF target is little-endian on x86. */
#ifndef bpf_htons
#define bpf_htons(x) ((__be16)__builtin_bswap16((__u16)(x)))
#endif
#ifndef bpf_ntohs
#define bpf_ntohs(x) ((__u16)__builtin_bswap16((__u16)(x)))
#endif
#ifndef bpf_htonl
#define bpf_htonl(x) ((__be32)__builtin_bswap32((__u32)(x)))
#endif
#ifndef bpf_ntohl
#define bpf_ntohl(x) ((__u32)__builtin_bswap32((__u32)(x)))
#endif

/* The conntrack clock. CLOCK_MONOTONIC_COARSE is enough for timeouts and cheaper, but
 * bpf_ktime_get_coarse_ns only exists from 5.11; on older kernels (Debian 11's 5.10) the
 * loader's probe (ebpf_nodeport/kernel.py) leaves HAVE_KTIME_COARSE undefined and the fine
 * clock is used. User space reads the same clock (maps.ktime_ns asks the same probe).
 * With the coarse clock, pkt_now() (parse.h) calls it once per jiffy and CPU, the jiffy told by
 * bpf_jiffies64() (5.5, inlined by the verifier on 64-bit JITs): no probe of its own needed. */
#ifdef HAVE_KTIME_COARSE
#define ct_clock_ns() bpf_ktime_get_coarse_ns()
#else
#define ct_clock_ns() bpf_ktime_get_ns()
#endif

#ifndef TC_ACT_REDIRECT
#define TC_ACT_REDIRECT 7
#endif

#define IP_DF_BIT 0x4000
#define IP_MF_BIT 0x2000
#define IP_OFFSET_MASK 0x1fff

#ifndef likely
#define likely(x) __builtin_expect(!!(x), 1)
#endif
#ifndef unlikely
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif

#endif /* NP_COMPAT_H */
