"""Kernel matrix: run the bpf and lab suites inside qemu VMs booted on Debian kernels.

Standard library only, so `./setup.sh vm-test` can drive it with the host's /usr/bin/python3
before (or without) the project's venv.
"""
