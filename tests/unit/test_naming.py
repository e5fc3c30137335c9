"""Naming convention: lab names, namespace names, cali interface names (docs/conventions.md)."""

from __future__ import annotations

import hashlib

import pytest

from netns_lab import naming
from netns_lab.errors import LabError


@pytest.mark.parametrize("name", ["default", "a", "t1abc", "lab2", "abcdefghijkl"])
def test_valid_lab_names(name: str) -> None:
    assert naming.check_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "Default", "1lab", "my-lab", "lab_2", "abcdefghijklm", "la b"])
def test_invalid_lab_names_are_rejected(name: str) -> None:
    with pytest.raises(LabError, match="invalid lab name"):
        naming.check_lab_name(name)


def test_namespace_names_and_split() -> None:
    assert naming.netns("default", "control") == "nl-default-control"
    assert naming.netns("default", "summary-1") == "nl-default-summary-1"
    assert naming.split_netns("nl-default-summary-1") == ("default", "summary-1")
    assert naming.split_netns("nl-t1x-fabric") == ("t1x", "fabric")


@pytest.mark.parametrize("name", ["default", "nl-", "nl-lab", "nl--x", "nl-Lab-x", "xx-lab-node1", "nl-lab-"])
def test_split_rejects_foreign_names(name: str) -> None:
    assert naming.split_netns(name) is None


def test_cali_name_is_calico_style_and_fits_ifnamsiz() -> None:
    name = naming.cali_ifname("default", "customer")
    assert name == "cali" + hashlib.sha1(b"default/customer").hexdigest()[:11]
    assert len(name) == 15  # IFNAMSIZ - 1
    assert naming.cali_ifname("other", "customer") != name  # per lab, so labs never clash


def test_paths_follow_conventions() -> None:
    assert str(naming.state_path("default")) == "/run/netns-lab/default/state.json"
    assert str(naming.lock_path("default")) == "/run/netns-lab/default/lock"
    assert str(naming.log_path("default", "customer")) == "/run/netns-lab/default/logs/customer.log"
    assert str(naming.bpf_dir("default")) == "/sys/fs/bpf/netns-lab/default"
