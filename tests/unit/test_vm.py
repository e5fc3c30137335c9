"""The kernel-matrix runner's pure parts: kernel selection, image key, mirror, JUnit summary."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from netns_lab.vm import image, matrix, progress, qemu, summary

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("names,want", [
    ([], ["5.10", "6.1", "6.12"]),
    (["6.12"], ["6.12"]),
    (["6.1", "5.10", "6.1"], ["6.1", "5.10"]),
])
def test_select_kernels(names: list[str], want: list[str]) -> None:
    assert [k.name for k in matrix.select_kernels(names)] == want


def test_select_unknown_kernel_names_it() -> None:
    with pytest.raises(ValueError, match="unknown kernel 4.19"):
        matrix.select_kernels(["6.1", "4.19"])


def test_setup_packages_are_setup_sh_list() -> None:
    pkgs = matrix.setup_packages((REPO / "setup.sh").read_text())
    assert "python3-bpfcc" in pkgs and "linux-headers-amd64" in pkgs
    assert not any('"' in p or "$" in p for p in pkgs)


def test_image_key_follows_package_list() -> None:
    text = 'x\n    pkgs=(a "b-$arch"\n          c)\n'
    base = matrix.image_key(matrix.setup_packages(text))
    assert matrix.image_key(matrix.setup_packages(text.replace("c)", "c d)"))) != base
    assert matrix.image_key(matrix.setup_packages(text.replace("a ", "a  "))) == base


@pytest.mark.parametrize("sources,want", [
    (["Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"], "http://deb.debian.org/debian"),
    (["deb [arch=amd64] http://mirror.example/debian/ bookworm main\n"], "http://mirror.example/debian"),
    (["URIs: http://deb.debian.org/debian-security\n", "deb http://m/debian bookworm main"], "http://m/debian"),
    (["# deb http://old/debian bookworm main\nURIs: https://x/debian\n"], "https://x/debian"),
])
def test_debian_mirror(sources: list[str], want: str) -> None:
    assert matrix.debian_mirror(sources) == want


def test_debian_mirror_missing() -> None:
    with pytest.raises(ValueError):
        matrix.debian_mirror(["deb https://packages.example/apt stable main\n"])


def test_first_depends_picks_the_versioned_image() -> None:
    out = "linux-image-amd64\n  Depends: linux-image-5.10.0-35-amd64\n  Recommends: x\n"
    assert image.first_depends(out, "linux-image-") == "linux-image-5.10.0-35-amd64"


def test_kernel_release_picks_newest() -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "boot").mkdir()
        for r in ("6.1.0-9-amd64", "6.1.0-50-amd64", "5.10.0-35-amd64"):
            (Path(d) / "boot" / f"vmlinuz-{r}").touch()
        assert image.kernel_release(Path(d)) == "6.1.0-50-amd64"
        assert image.kernel_release(Path(d), "5.10") == "5.10.0-35-amd64"


def test_overlay_boot_is_never_writable_on_the_image() -> None:
    spec = qemu.VmSpec(Path("/k"), Path("/i"), Path("/img"), Path("/src"), Path("/out"), args=["a=b"])
    argv = qemu.qemu_argv(spec, Path("/tmp/o.qcow2"), "qcow2")
    drive = argv[argv.index("-drive") + 1]
    assert drive.startswith("file=/tmp/o.qcow2,") and "/img" not in drive
    assert "readonly=on" in next(a for a in argv if "mount_tag=src" in a)
    assert "-no-reboot" in argv and "tcg,thread=multi" in argv
    assert qemu.cmdline(spec).endswith("a=b") and "panic=-1" in qemu.cmdline(spec)


@pytest.mark.parametrize("words,want", [
    ([], ["tests", "--ignore=tests/unit"]),
    (["--ignore=tests/lab"], ["tests", "--ignore=tests/unit", "--ignore=tests/lab"]),
    (["-k", "abi", "-x"], ["tests", "--ignore=tests/unit", "-k", "abi", "-x"]),
    (["tests/bpf/test_abi.py", "-x"], ["tests/bpf/test_abi.py", "-x"]),
    (["-x", "tests/lab/test_ebpf_lab.py::test_x"], ["-x", "tests/lab/test_ebpf_lab.py::test_x"]),
    (["tests/nope.py"], ["tests", "--ignore=tests/unit", "tests/nope.py"]),  # pytest names it missing
])
def test_pytest_argv_default_paths_unless_given(words: list[str], want: list[str]) -> None:
    assert matrix.pytest_argv(words, lambda p: (REPO / p).exists()) == want


JUNIT = """<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.bpf.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.bpf.test_a" name="test_skip"><skipped type="pytest.skip" message="kernel lacks X"/></testcase>
<testcase classname="tests.bpf.test_a" name="test_skip2"><skipped message="kernel lacks X"/></testcase>
<testcase classname="tests.lab.test_b" name="test_bad"><failure message="boom"/></testcase>
</testsuite></testsuites>"""


def test_summary_counts_and_reasons(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    (tmp_path / "status.env").write_text("kernel=5.10.0-35-amd64\nsetup_rc=0\npytest_rc=1\nlesson_rc=0\ntime_pytest=300\n")
    r = summary.load("5.10", tmp_path, 400.0)
    assert (r.passed, r.failed, r.skipped) == (1, 1, 2)
    assert r.skip_reasons == {"kernel lacks X": 2}
    assert r.failures == ["tests.lab.test_b::test_bad"] and not r.ok
    table = summary.format_table([r])
    assert "5.10.0-35-amd64" in table and "skipped 2: kernel lacks X" in table and "pytest exited 1" in table


@pytest.mark.parametrize("status,ok", [
    ("setup_rc=0\npytest_rc=0\nlesson_rc=0\n", True),
    ("setup_rc=0\npytest_rc=0\nlesson_rc=1\n", False),
    ("setup_rc=0\npytest_rc=0\n", False),          # the lesson never ran
    ("", False),                                    # the VM wrote nothing
])
def test_summary_ok_needs_every_stage(tmp_path: Path, status: str, ok: bool) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT.replace('<failure message="boom"/>', ""))
    (tmp_path / "status.env").write_text(status)
    assert summary.load("6.1", tmp_path, 1.0).ok is ok


@pytest.mark.parametrize("modules,want", [
    (["kvm", "kvm_amd"], "hardware"),
    (["kvm", "kvm_intel", "kvm_pvm"], "hardware"),
    (["kvm", "kvm_pvm"], "pvm"),
    (["kvm"], "none"),
])
def test_kvm_backend_names_pvm(tmp_path: Path, modules: list[str], want: str) -> None:
    for m in modules:
        (tmp_path / m).mkdir()
    assert qemu.kvm_backend(tmp_path) == want


def test_bpf_cache_is_shared_only_when_given() -> None:
    spec = qemu.VmSpec(Path("/k"), Path("/i"), Path("/img"), Path("/src"), Path("/out"))
    assert not any("mount_tag=bpfcache" in a for a in qemu.qemu_argv(spec, Path("/o"), "qcow2"))
    spec.bpf_cache = Path("/c/bpf-6.1")
    share = next(a for a in qemu.qemu_argv(spec, Path("/o"), "qcow2") if "mount_tag=bpfcache" in a)
    assert share.startswith("local,path=/c/bpf-6.1,") and "readonly" not in share


# --------------------------------------------------------------------------- progress while pytest runs
RUNNING_LOG = """============================= test session starts ==============================
platform linux -- Python 3.11.2, pytest-9.2.0, pluggy-1.7.0
collected 567 items

tests/bpf/test_abi.py ..........................                         [  4%]
tests/bpf/test_conntrack.py ....F.....                                   [ 12%]
tests/lab/test_graceful_lab.py ...........E...........................................
..F.....                                                                 [ 31%]
tests/lab/test_dsr_lab.py ..s"""


@pytest.mark.parametrize("log, want", [
    ("", None),
    ("============================= test session starts ==============================\ncollecting ...",
     progress.Progress(None, None, 0)),
    (RUNNING_LOG, progress.Progress(31, "tests/lab/test_dsr_lab.py", 3)),
    (RUNNING_LOG + "\n\n========== 3 failed, 560 passed, 4 skipped in 6530.12s (1:48:50) ==========\n", None),
])
def test_pytest_progress(log: str, want: progress.Progress | None) -> None:
    assert progress.pytest_progress(log) == want


def test_progress_line_says_where_and_how_long() -> None:
    assert (progress.Progress(31, "tests/lab/test_dsr_lab.py", 3).line(14.4)
            == "pytest 31%, in tests/lab/test_dsr_lab.py, 14 min in, 3 failed so far")
    assert progress.Progress(None, None, 0).line(0.2) == "pytest starting, 0 min in"


def test_ticker_reports_until_stopped(tmp_path: Path) -> None:
    log = tmp_path / "pytest.log"
    log.write_text(RUNNING_LOG)
    lines: list[str] = []
    thread, stop = progress.ticker(log, lines.append, started=0.0, clock=lambda: 600.0, interval_s=0.01)
    deadline = time.monotonic() + 5
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert lines and lines[0] == "pytest 31%, in tests/lab/test_dsr_lab.py, 10 min in, 3 failed so far"
