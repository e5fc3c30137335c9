"""ebpf_nodeport: Calico-style eBPF NodePort/ClusterIP service handling, loaded through BCC.

Modules: libbpf (ctypes syscalls), maps (typed map views, mirrors of bpf/lib/maps.h),
netns (namespace handles), loader (BCC compile + pin), tc (clsact attach), datapath
(NodeDatapath: load, attach, flags, GC), sync (ServiceSyncer: a ClusterView into the maps).
Knows nothing about labs: a node is a pin directory and a namespace handle, both given by
the caller (netns_lab drives it through datapath.NodeDatapath).
"""

__all__ = ["libbpf", "maps", "netns", "loader", "tc", "datapath", "sync"]
