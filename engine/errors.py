"""Errors the engine raises: each names the input that was wrong and what would be right."""


class EngineError(Exception):
    """Base class of every error the engine reports to a caller."""


class InvalidRequest(EngineError, ValueError):
    """A request (script, voices, options) that cannot be synthesised as given."""


class CheckpointError(EngineError):
    """A checkpoint or exported repository that cannot be loaded."""


class RuntimeUnavailable(EngineError):
    """A runtime was asked for that this machine or these artifacts cannot provide."""


class Cancelled(EngineError):
    """A request was cancelled (by its client, or because its consumer went away) before it finished."""
