"""New-connection load: a minimal HTTP server and a client opening a fresh TCP connection per request.

Run inside lab namespaces as `python -m netns_lab.bench.conn server|client ...`. Stdlib only
(and the project's namespace handle) and one process each, so every mode is measured with
exactly the same client and server. The server answers each request with a fixed 200 and no
application work, so nothing hides the datapath.
The client closes each connection as soon as the whole response is in, so the TIME_WAIT stays
on the client (which reuses those ports with tcp_tw_reuse) and never on the server: with
kube-proxy's SNAT every connection reaches the pod from the same node address, and server-side
TIME_WAITs would turn random port reuse into PAWS-dropped SYNs and one-second retransmits,
an artefact of the load generator, not of the datapath. The client records, per connection, the kernel's own
handshake RTT (tcp_info after connect: SYN out to SYN-ACK in, the first packet's round trip
through the service datapath, which is where kube-proxy walks its rules), the time `connect()`
took as the application sees it, and the whole request (connect, request, complete response).
It prints one JSON object: counts, rate and both latency lists summarised by stats.summary.
With --alt, every connection is followed by one to a second target in another namespace (the
direct-routing lab), so both samples see the same machine load: their ratio is what is compared.
"""

from __future__ import annotations

import argparse
import errno
import json
import select
import socket
import struct
import sys
import time

from ebpf_nodeport.netns import THREAD_NETNS
from ebpf_nodeport.netns import Netns as NetnsHandle
from netns_lab import naming
from netns_lab.bench.stats import summary

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
BACKLOG = 4096
TCPI_RTT_OFFSET = 68   # struct tcp_info: 8 u8 fields, then u32 rto, ato, ..., rcv_ssthresh, rtt
TCP_INFO_LEN = 104


# --------------------------------------------------------------------------- server


def serve(port: int) -> None:
    """Answer every connection with RESPONSE once its request has arrived, then close (epoll, one thread)."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(BACKLOG)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, tuple[socket.socket, bytearray]] = {}
    print(f"bench http server on TCP {port}", file=sys.stderr, flush=True)
    while True:
        for fd, _ in ep.poll():
            if fd == lsock.fileno():
                while True:
                    try:
                        sock, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    except OSError:
                        break
                    sock.setblocking(False)
                    conns[sock.fileno()] = (sock, bytearray())
                    ep.register(sock.fileno(), select.EPOLLIN)
                continue
            sock, buf = conns[fd]
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                answered = b"\r\n\r\n" in buf
                buf += data
                if not answered and b"\r\n\r\n" in buf:
                    try:
                        sock.send(RESPONSE)  # fits the empty send buffer of a fresh connection
                    except OSError:
                        pass
                continue
            ep.unregister(fd)  # the client closed first: its side keeps the TIME_WAIT
            del conns[fd]
            sock.close()


# --------------------------------------------------------------------------- client


def syn_rtt_us(sock: socket.socket) -> float:
    """The kernel's round-trip time of the handshake (SYN out to SYN-ACK in), in us: tcp_info.tcpi_rtt
    right after connect(), when the SYN-ACK is the connection's only RTT sample. No Python, no
    syscall entry in it: the first packet's trip through the datapath and back."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    return struct.unpack_from("I", info, TCPI_RTT_OFFSET)[0]


def _ok(reply: bytes) -> bool:
    """True when the reply is the server's whole 200."""
    return reply == RESPONSE


class Netns:
    """Switches the calling thread between network namespaces, so one client can reach two labs."""

    def __init__(self) -> None:
        # Held open, so a switch is one setns(); "" is the namespace the thread started in.
        self.handles: dict[str, NetnsHandle] = {"": NetnsHandle.hold(THREAD_NETNS, name="own")}
        self.current = ""

    def enter(self, name: str) -> None:
        """Join named namespace `name` ("" = the one the process started in)."""
        if name == self.current:
            return
        if name not in self.handles:
            self.handles[name] = NetnsHandle.hold(naming.netns_path(name))
        self.handles[name].join()
        self.current = name


def sequential(targets: list[tuple[str, str, int]], count: int, duration: float, timeout: float) -> list[dict]:
    """One connection at a time: latencies without queueing (the first-packet latency).

    With several targets (namespace, address, port) the connections go to each in turn, so their
    samples are taken under the same machine load; one result per target.
    """
    ns = Netns()
    lists: list[tuple[list[float], list[float], list[float], dict[str, int]]] = [([], [], [], {}) for _ in targets]
    t_start = time.perf_counter()
    deadline = t_start + duration if duration > 0 else float("inf")
    n = 0
    while (count <= 0 or n < count) and time.perf_counter() < deadline:
        n += 1
        for (netns, addr, port), (connect_us, request_us, rtt_us, errors) in zip(targets, lists):
            ns.enter(netns)  # the socket belongs to the namespace it is created in
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                t0 = time.perf_counter_ns()
                sock.connect((addr, port))
                t1 = time.perf_counter_ns()
                rtt = syn_rtt_us(sock)
                sock.sendall(REQUEST)
                reply = b""
                while len(reply) < len(RESPONSE) and (chunk := sock.recv(4096)):
                    reply += chunk
                t2 = time.perf_counter_ns()
            except OSError as exc:
                key = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                errors[key] = errors.get(key, 0) + 1
                continue
            finally:
                sock.close()
            if not _ok(reply):
                errors["bad_reply"] = errors.get("bad_reply", 0) + 1
                continue
            connect_us.append((t1 - t0) / 1e3)
            request_us.append((t2 - t0) / 1e3)
            rtt_us.append(rtt)
    elapsed = time.perf_counter() - t_start
    return [_result(n, c, r, e, elapsed, 1, rtt) for c, r, rtt, e in lists]


def concurrent(addr: str, port: int, count: int, duration: float, timeout: float, concurrency: int) -> dict:
    """`concurrency` connections in flight (epoll), each a fresh one per request: the request rate."""
    ep = select.epoll()
    slots: dict[int, list] = {}  # fd -> [sock, t0, t_connected, reply]
    connect_us: list[float] = []
    request_us: list[float] = []
    errors: dict[str, int] = {}
    started = 0
    t_start = time.perf_counter()
    deadline = t_start + duration if duration > 0 else float("inf")

    def fail(fd: int, key: str) -> None:
        errors[key] = errors.get(key, 0) + 1
        close(fd)

    def close(fd: int) -> None:
        sock = slots.pop(fd)[0]
        ep.unregister(fd)
        sock.close()

    def open_one() -> None:
        nonlocal started
        started += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        t0 = time.perf_counter_ns()
        rc = sock.connect_ex((addr, port))
        if rc not in (0, errno.EINPROGRESS):
            errors[errno.errorcode.get(rc, str(rc))] = errors.get(errno.errorcode.get(rc, str(rc)), 0) + 1
            sock.close()
            return
        slots[sock.fileno()] = [sock, t0, 0, b""]
        ep.register(sock.fileno(), select.EPOLLOUT)

    while True:
        now = time.perf_counter()
        while len(slots) < concurrency and (count <= 0 or started < count) and now < deadline:
            open_one()
        if not slots:
            break
        events = ep.poll(0.05)
        now_ns = time.perf_counter_ns()
        for fd, ev in events:
            slot = slots.get(fd)
            if slot is None:
                continue
            sock = slot[0]
            if slot[2] == 0:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(fd, errno.errorcode.get(err, str(err)))
                    continue
                slot[2] = now_ns
                try:
                    sock.send(REQUEST)
                except OSError as exc:
                    fail(fd, errno.errorcode.get(exc.errno or 0, "send"))
                    continue
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                chunk = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                fail(fd, errno.errorcode.get(exc.errno or 0, "recv"))
                continue
            slot[3] += chunk
            if chunk and len(slot[3]) < len(RESPONSE):
                continue
            if not _ok(slot[3]):
                fail(fd, "bad_reply")
                continue
            connect_us.append((slot[2] - slot[1]) / 1e3)
            request_us.append((now_ns - slot[1]) / 1e3)
            close(fd)
        limit_ns = int(timeout * 1e9)
        for fd in [fd for fd, s in slots.items() if now_ns - s[1] > limit_ns]:
            fail(fd, "timeout")
    return _result(started, connect_us, request_us, errors, time.perf_counter() - t_start, concurrency)


def _result(attempted: int, connect_us: list[float], request_us: list[float], errors: dict[str, int],
            elapsed: float, concurrency: int, syn_rtt: list[float] | None = None) -> dict:
    """The client's JSON document."""
    return {
        "syn_rtt_us": summary(syn_rtt) if syn_rtt is not None else None,
        "attempted": attempted,
        "completed": len(request_us),
        "errors": errors,
        "elapsed_s": elapsed,
        "concurrency": concurrency,
        "rate_per_s": len(request_us) / elapsed if elapsed > 0 else 0.0,
        "connect_us": summary(connect_us),
        "request_us": summary(request_us),
    }


def main(argv: list[str] | None = None) -> None:
    """`server --port P` or `client --addr A --port P [--count N] [--duration S] [--concurrency C]`."""
    ap = argparse.ArgumentParser(prog="python -m netns_lab.bench.conn")
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client")
    c.add_argument("--addr", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--count", type=int, default=0, help="connections (0: until --duration)")
    c.add_argument("--duration", type=float, default=0.0, help="seconds (0: until --count)")
    c.add_argument("--concurrency", type=int, default=1)
    c.add_argument("--timeout", type=float, default=3.0)
    c.add_argument("--alt", metavar="NETNS,ADDR,PORT",
                   help="sequential only: alternate each connection with one to ADDR:PORT from named namespace NETNS")
    args = ap.parse_args(argv)
    if args.role == "server":
        serve(args.port)
        return
    if args.count <= 0 and args.duration <= 0:
        ap.error("give --count or --duration")
    if args.alt and args.concurrency > 1:
        ap.error("--alt needs --concurrency 1")
    if args.concurrency <= 1:
        targets = [("", args.addr, args.port)]
        if args.alt:
            alt_ns, alt_addr, alt_port = args.alt.split(",")
            targets.append((alt_ns, alt_addr, int(alt_port)))
        docs = sequential(targets, args.count, args.duration, args.timeout)
        doc = docs[0]
        if args.alt:
            doc["alt"] = docs[1]
    else:
        doc = concurrent(args.addr, args.port, args.count, args.duration, args.timeout, args.concurrency)
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
