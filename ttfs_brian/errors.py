"""Exceptions with messages that name the problem and the fix (importable without torch).

Every error the library raises on purpose derives from :class:`TTFSBrianError`; the command line
prints its message as one line and exits with status 2.
"""


class TTFSBrianError(Exception):
    """Base of the library's own errors."""


class ConversionError(TTFSBrianError, ValueError):
    """The model or its data cannot be converted; the message names the cause and the fix."""


class UnsupportedModuleError(ConversionError):
    """A module or function the converter cannot map; the message names it and lists what is supported."""


class NetworkFileError(TTFSBrianError, ValueError):
    """A network file that cannot be read: corrupt, foreign, or of an unknown version."""


class InputError(TTFSBrianError, ValueError):
    """Bad inputs or arguments: wrong shapes, an empty batch, NaN or Inf, a value out of its range."""


class DataFileError(InputError):
    """A data file that cannot be read as a ``.npy`` array."""


class ModelMismatchError(InputError):
    """A torch model and a converted network that do not belong together."""


class ToolchainError(TTFSBrianError, RuntimeError):
    """A build tool or optional package that a Brian2 device needs is missing."""


class TrainingModeWarning(UserWarning):
    """A model converted while some of its modules were in training mode."""
