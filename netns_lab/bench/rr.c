/* rr: TCP request/response load, netperf TCP_RR / TCP_CRR style, for `netns-lab bench`.
 *
 * Why C: one transaction on veths costs the datapath 10-40 us; a Python client adds about as
 * much of its own per transaction, which would dilute the differences between the modes. This
 * file is compiled at run time with the system's cc (netns_lab/bench/rrtool.py) and cached.
 *
 *   rr server PORT                 echo every byte back; close when the client closes
 *   rr rr  ADDR PORT SECONDS SIZE  one connection, SIZE-byte request, SIZE-byte reply, repeat
 *   rr crr ADDR PORT SECONDS SIZE  the same with a new connection per transaction (client closes)
 *
 * The client prints one JSON line: transactions, errors, elapsed seconds, latency p50/p99 in us.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 64
#define HIST_US 100000 /* latency histogram, 1 us buckets; slower ones count in the last */

static unsigned long hist[HIST_US + 1];

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int serve(int port)
{
	int one = 1, ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	struct epoll_event ev = {.events = EPOLLIN}, evs[MAX_EVENTS];
	char buf[65536];
	int ep = epoll_create1(0);

	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 4096)) {
		perror("rr server");
		return 1;
	}
	ev.data.fd = ls;
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	for (;;) {
		int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == ls) {
				int c;
				while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					ev.data.fd = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				}
				continue;
			}
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r > 0) {
				ssize_t off = 0;
				while (off < r) { /* small replies: the send buffer has room */
					ssize_t w = write(fd, buf + off, r - off);
					if (w <= 0)
						break;
					off += w;
				}
			} else if (r == 0 || errno != EAGAIN) {
				close(fd); /* also leaves the epoll set */
			}
		}
	}
}

static int open_conn(struct sockaddr_in *a)
{
	int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
	struct timeval tv = {.tv_sec = 2};

	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(s, (struct sockaddr *)a, sizeof(*a))) {
		close(s);
		return -1;
	}
	return s;
}

/* One request/response on s; 0 on success. */
static int transact(int s, char *buf, int size)
{
	int got = 0;
	if (write(s, buf, size) != size)
		return -1;
	while (got < size) {
		ssize_t r = read(s, buf + got, size - got);
		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

static double pct(unsigned long total, double p)
{
	unsigned long want = (unsigned long)(total * p), seen = 0;
	for (int i = 0; i <= HIST_US; i++) {
		seen += hist[i];
		if (seen > want)
			return i + 0.5;
	}
	return HIST_US;
}

static int client(int crr, const char *addr, int port, double seconds, int size)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	unsigned long n = 0, errors = 0;
	char buf[65536];
	int s = -1;
	double t0, end, t;

	if (size < 1 || size > (int)sizeof(buf) || inet_pton(AF_INET, addr, &a.sin_addr) != 1) {
		fprintf(stderr, "rr: bad address or size\n");
		return 2;
	}
	memset(buf, 'x', size);
	t0 = now_s();
	end = t0 + seconds;
	while ((t = now_s()) < end) {
		if (s < 0 && (s = open_conn(&a)) < 0) {
			errors++;
			continue;
		}
		if (transact(s, buf, size)) {
			errors++;
			close(s);
			s = -1;
			continue;
		}
		if (crr) {
			close(s); /* the client closes first: the TIME_WAIT stays here (tcp_tw_reuse) */
			s = -1;
		}
		long us = (long)((now_s() - t) * 1e6);
		hist[us > HIST_US ? HIST_US : us]++;
		n++;
	}
	if (s >= 0)
		close(s);
	t = now_s() - t0;
	printf("{\"transactions\": %lu, \"errors\": %lu, \"elapsed_s\": %.6f, \"rate_per_s\": %.1f, "
	       "\"p50_us\": %.1f, \"p99_us\": %.1f}\n",
	       n, errors, t, n / t, n ? pct(n, 0.5) : -1.0, n ? pct(n, 0.99) : -1.0);
	return n ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "server"))
		return serve(atoi(argv[2]));
	if (argc == 6 && (!strcmp(argv[1], "rr") || !strcmp(argv[1], "crr")))
		return client(!strcmp(argv[1], "crr"), argv[2], atoi(argv[3]), atof(argv[4]), atoi(argv[5]));
	fprintf(stderr, "usage: rr server PORT | rr rr|crr ADDR PORT SECONDS SIZE\n");
	return 2;
}
