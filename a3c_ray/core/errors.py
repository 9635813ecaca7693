"""Errors that reach the user as one line (kept free of heavy imports)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: the message says why and what to do."""
