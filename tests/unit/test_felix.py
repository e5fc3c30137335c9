"""FelixConfiguration patches: the lesson's calicoctl commands and the errors a typo gets."""
import pytest

from netns_lab.felix import FelixConfig, FelixConfigError, apply_patch, for_mode


@pytest.mark.parametrize("patch, mode", [
    ('{"spec": {"bpfEnabled": true}}', "tunnel"),
    ('{ "spec":  \n{"bpfEnabled": true}}', "tunnel"),  # the lesson's line-wrapped form
    ('{"spec": {"bpfEnabled": true, "bpfExternalServiceMode": "DSR"}}', "dsr"),
    ('{"spec": {"bpfExternalServiceMode": "DSR"}}', "kube-proxy"),  # DSR alone does not enable eBPF
    ('{"spec": {}}', "kube-proxy"),
])
def test_patch_selects_mode(patch, mode):
    assert apply_patch(FelixConfig(), patch).mode == mode


def test_lesson_sequence():
    cfg = FelixConfig()
    cfg = apply_patch(cfg, '{"spec": {"bpfKubeProxyIptablesCleanupEnabled": false}}')
    assert cfg.mode == "kube-proxy" and cfg.bpfKubeProxyIptablesCleanupEnabled is False
    cfg = apply_patch(cfg, '{"spec": {"bpfEnabled": true}}')
    assert cfg.mode == "tunnel" and cfg.bpfKubeProxyIptablesCleanupEnabled is False
    cfg = apply_patch(cfg, '{"spec": {"bpfExternalServiceMode": "DSR"}}')
    assert cfg.mode == "dsr"


@pytest.mark.parametrize("patch, words", [
    ("{not json", "not valid JSON"),
    ('{"spec": {"bpfEnabeld": true}}', "valid fields: bpfEnabled"),
    ('{"spec": {"bpfExternalServiceMode": "dsr"}}', "must be one of Tunnel, DSR"),
    ('{"spec": {"bpfEnabled": "yes"}}', "must be true or false"),
    ('{"spec": {"bpfDSROptoutCIDRs": ["198.19.15.0/33"]}}', "not an IPv4 CIDR"),
    ('{"spec": {"bpfDSROptoutCIDRs": "198.19.15.0/24"}}', "must be a list"),
    ('{"spec": {"bpfConnectTimeLoadBalancing": "tcp"}}', "must be one of TCP, Enabled, Disabled"),
    ('{"spec": {"bpfMapSizeConntrack": 1023}}', "from 1024 to 4194304, not 1023"),
    ('{"spec": {"bpfMapSizeConntrack": 4194305}}', "from 1024 to 4194304, not 4194305"),
    ('{"spec": {"bpfMapSizeConntrack": "512k"}}', "whole number of entries"),
    ('{"spec": {"bpfMapSizeConntrack": 65536.5}}', "whole number of entries"),
    ('{"spec": {"bpfMapSizeConntrack": true}}', "whole number of entries"),
    ('{"bpfEnabled": true}', "with a \"spec\" key"),
    ('{"metadata": {"name": "other"}, "spec": {}}', "only FelixConfiguration \"default\""),
])
def test_bad_patch_is_one_clear_line(patch, words):
    with pytest.raises(FelixConfigError) as e:
        apply_patch(FelixConfig(), patch)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_mode_short_form_and_round_trip():
    cfg = for_mode(FelixConfig(), "dsr")
    assert cfg.to_spec()["bpfEnabled"] is True and cfg.bpfExternalServiceMode == "DSR"
    assert FelixConfig.from_spec(cfg.to_spec()) == cfg
    assert for_mode(cfg, "kube-proxy").mode == "kube-proxy"
    with pytest.raises(FelixConfigError, match="valid modes: kube-proxy, tunnel, dsr"):
        for_mode(cfg, "dssr")


def test_optout_cidrs_normalised():
    cfg = apply_patch(FelixConfig(), '{"spec": {"bpfDSROptoutCIDRs": ["198.19.15.254/24"]}}')
    assert cfg.bpfDSROptoutCIDRs == ("198.19.15.0/24",)


@pytest.mark.parametrize("value", ["TCP", "Enabled", "Disabled"])
def test_connect_time_lb_setting(value):
    assert FelixConfig().bpfConnectTimeLoadBalancing == "TCP"   # Calico's default
    cfg = apply_patch(FelixConfig(), '{"spec": {"bpfConnectTimeLoadBalancing": "%s"}}' % value)
    assert cfg.bpfConnectTimeLoadBalancing == value and cfg.to_spec()["bpfConnectTimeLoadBalancing"] == value


def test_conntrack_map_size_setting():
    """Calico's default is the datapath's own MAX_CT, compiled without a define (one compile cache entry
    for every default lab); another size becomes the MAX_CT define."""
    from ebpf_nodeport.abi import MAP_SPECS
    from netns_lab.dataplane import datapath_defines

    assert FelixConfig().bpfMapSizeConntrack == 512000 == MAP_SPECS["ct"].max_entries
    assert datapath_defines(FelixConfig()) == {}
    cfg = apply_patch(FelixConfig(), '{"spec": {"bpfMapSizeConntrack": 65536}}')
    assert cfg.to_spec()["bpfMapSizeConntrack"] == 65536 and FelixConfig.from_spec(cfg.to_spec()) == cfg
    assert datapath_defines(cfg) == {"MAX_CT": 65536}
