"""ebpf_nodeport: Calico-style eBPF NodePort/ClusterIP service handling, loaded through BCC.

Modules: libbpf (ctypes syscalls), abi (the one Python mirror of the C: names, flags,
struct layouts, map specs), maps (typed views of pinned maps), btf + pins (pinned maps
checked against abi by BTF layout, upgraded on load), netns (namespace handles), loader
(BCC compile + pin), tc (clsact attach), datapath (NodeDatapath: load, attach, flags, GC),
sync (ServiceSyncer: a ClusterView into the maps).
Knows nothing about labs: a node is a pin directory and a namespace handle, both given by
the caller (netns_lab drives it through datapath.NodeDatapath).
"""

__all__ = ["libbpf", "abi", "maps", "btf", "pins", "netns", "loader", "tc", "datapath", "sync"]
