"""Errors the CLI turns into one clear line on stderr and a non-zero exit."""


class LabError(Exception):
    """A user-facing failure: the message is printed as is, without a traceback."""
