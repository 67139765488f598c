"""User-facing errors. Each message is one line naming the file / field / entry and what was expected; the CLI
prints it (``error: ...``) and exits non-zero without a traceback."""

__all__ = ["RegposeError", "ConfigError", "DataError", "CheckpointError", "InputError"]


class RegposeError(Exception):
    """Base of every error the user can fix."""


class ConfigError(RegposeError, ValueError):
    """A config problem the user can fix; the message is a single line naming the key."""


class DataError(RegposeError, ValueError):
    """Malformed annotations / results / images."""


class CheckpointError(RegposeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class InputError(RegposeError):
    """Inference input that cannot be read."""
