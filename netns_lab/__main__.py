"""`python -m netns_lab` runs the CLI (same as the `netns-lab` console script)."""

from netns_lab.cli import main

if __name__ == "__main__":
    main()
