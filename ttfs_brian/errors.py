"""Exceptions with messages that name the problem and the fix (importable without torch)."""


class ConversionError(ValueError):
    """The model or its data cannot be converted; the message names the cause and the fix."""


class UnsupportedModuleError(ConversionError):
    """A module or function the converter cannot map; the message names it and lists what is supported."""


class NetworkFileError(ValueError):
    """A network file that cannot be read: corrupt, foreign, or of an unknown version."""
