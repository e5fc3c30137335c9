"""ebpf_nodeport: Calico-style eBPF NodePort/ClusterIP service handling, loaded through BCC.

Modules: libbpf (ctypes syscalls), abi (the one Python mirror of the C: names, flags,
struct layouts, map specs), maps (typed views of pinned maps), btf + pins (pinned maps
checked against abi by BTF layout, upgraded on load), loader (BCC compile + pin),
tc (clsact attach), datapath (NodeDatapath API).
Knows nothing about the lab: netns_lab drives it through datapath.NodeDatapath.
"""

__all__ = ["libbpf", "abi", "maps", "btf", "pins", "loader", "tc", "datapath"]
