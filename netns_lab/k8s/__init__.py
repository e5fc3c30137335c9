"""Kubernetes objects in and out: manifests become the lab's Topology, and the lab is shown as kubectl shows a cluster.

manifest.py reads YAML (files, directories, stdin; multi-document) into the Topology the
builder already knows; names.py is how Kubernetes names and places pods; views.py renders
pods, services, EndpointSlices and nodes in the Kubernetes object shape; live.py makes a
running lab follow a changed Topology (apply, delete, scale, a ReplicaSet's replacement pod).
"""
