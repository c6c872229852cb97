"""Error types raised where bad input enters nwsjax.

Every error a user can cause derives from :class:`NWSError`. Its message is one
line that names the problem and the fix; command-line entry points print it and
exit with status 2 instead of showing a traceback.
"""

__all__ = ["NWSError", "ConfigError", "DatasetError", "ZooError", "DiskFullError"]


class NWSError(Exception):
    """Base class of the errors a user can cause (bad options, files, folders)."""


class ConfigError(NWSError, ValueError):
    """A hyper-parameter, option or run setting is invalid."""


class DatasetError(NWSError):
    """A dataset cannot be found, read or prepared (the message is folded onto one line)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


class ZooError(NWSError):
    """A zoo folder is missing, partial, corrupt or of another format version."""


class DiskFullError(ZooError):
    """The disk filled up while a zoo was written; what was committed stays, ``--resume`` continues."""
