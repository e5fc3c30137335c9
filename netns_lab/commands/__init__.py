"""The netns-lab commands, one module per group; `common` holds what they share, netns_lab/cli.py assembles them."""
