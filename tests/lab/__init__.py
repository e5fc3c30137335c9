"""Whole-lab tests (root): real namespaces, real packets, driven through the CLI."""
