"""netns-lab: the yaobank cluster of the Calico eBPF lesson, rebuilt in network namespaces.

Kept import-light on purpose: the app servers (`python -m netns_lab.apps.<app>`) import
this package, and they should start fast without pulling in pyroute2, click or rich.
"""

__version__ = "0.1.0"
