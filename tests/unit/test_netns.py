"""ebpf_nodeport.netns.Netns: code, sockets and netlink land in the handle's namespace, the
calling thread never moves (except inside `inside()`), and nothing is left open after close."""
from __future__ import annotations

import errno
import os
import socket

import pytest

from ebpf_nodeport.netns import THREAD_NETNS, Netns

pytestmark = pytest.mark.root


def _here() -> int:
    """Inode of the calling thread's network namespace."""
    return os.stat(THREAD_NETNS).st_ino


@pytest.fixture
def private():
    ns = Netns.private()
    yield ns
    ns.close()


def test_run_happens_inside_and_the_caller_stays(private) -> None:
    home = _here()
    inside = private.run(_here)
    assert inside != home and _here() == home
    assert Netns(None).run(_here) == home                    # the current namespace: no thread
    assert private.run(_here) == inside                       # the same namespace each time


def test_run_hands_back_the_error(private) -> None:
    with pytest.raises(ZeroDivisionError):
        private.run(lambda: 1 / 0)


def test_inside_moves_the_thread_and_back(private) -> None:
    home = _here()
    with private.inside():
        assert _here() == private.run(_here) != home
    assert _here() == home


def test_socket_and_rtnl_belong_to_the_namespace(private) -> None:
    """A new namespace has only a down loopback: no route to 127.0.0.1, and netlink lists
    `lo` alone; the same calls here see this namespace's."""
    with private.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError) as err:
            sock.connect(("127.0.0.1", 9))
        assert err.value.errno == errno.ENETUNREACH
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", 9))
    ipr = private.rtnl()
    assert [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()] == ["lo"]
    assert private.rtnl() is ipr                              # cached on the handle
    private.close()
    with pytest.raises(ValueError, match="closed"):           # a private namespace ends with its handle
        private.run(_here)


def test_a_path_handle_reopens_after_close(tmp_path) -> None:
    """create/remove as `ip netns add/del` do; close() drops the cached socket, the handle by
    path opens a new one on the next use."""
    path = tmp_path / "ns"
    ns = Netns.create(path)
    try:
        assert ns.exists() and ns.run(_here) == os.stat(path).st_ino
        first = ns.rtnl()
        ns.close()
        second = ns.rtnl()
        assert second is not first
        assert [link.get_attr("IFLA_IFNAME") for link in second.get_links()] == ["lo"]
    finally:
        ns.remove()
    assert not path.exists() and not ns.exists()
    with pytest.raises(FileNotFoundError):
        ns.run(_here)


def test_create_refuses_an_existing_path(tmp_path) -> None:
    path = tmp_path / "taken"
    path.write_text("")
    with pytest.raises(FileExistsError):
        Netns.create(path)
    assert path.read_text() == ""


def test_a_dropped_handle_releases_what_it_held() -> None:
    """A caller that never closes (a NodeDatapath made per CLI call) leaks nothing: the
    handle's socket and namespace fd go with it, so a deleted namespace is not kept alive."""
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    ns = Netns.private()
    ns.rtnl()
    assert open_fds() > before
    del ns
    assert open_fds() == before


def test_a_handle_dropped_inside_an_event_loop_is_closed_later_without_warnings() -> None:
    """Garbage collection can drop a handle while another IPRoute's event loop runs on this
    thread. pyroute2's close() cannot run its own loop then: the IPRoute is closed at the next
    chance instead of half-closed with "shutdown_asyncgens was never awaited"."""
    import asyncio
    import gc
    import warnings

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    ns = Netns.private()
    ns.rtnl().get_links()

    async def drop() -> None:
        nonlocal ns
        del ns
        gc.collect()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        asyncio.run(drop())
        Netns(None).close()  # the next release outside a loop closes what was deferred
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, (RuntimeWarning, ResourceWarning))] == []
    assert open_fds() == before
