"""ebpf_nodeport: Calico-style eBPF NodePort/ClusterIP service handling, loaded through BCC.

Modules: libbpf (ctypes syscalls), maps (typed map views, mirrors of bpf/lib/maps.h),
loader (BCC compile + pin), tc (clsact attach), datapath (NodeDatapath API).
Knows nothing about the lab: netns_lab drives it through datapath.NodeDatapath.
"""

__all__ = ["libbpf", "maps", "loader", "tc", "datapath"]
