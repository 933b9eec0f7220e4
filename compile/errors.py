"""Exceptions the pipeline raises; each message says what is wrong and what to do."""


class AutoglmError(Exception):
    """Base class: an error the user can act on (the CLI prints it as one line)."""

    exit_code = 1


class UsageError(AutoglmError):
    """Bad input from the user: a missing file, a wrong flag value, a wrong tensor."""

    exit_code = 2


class ModelFormatError(UsageError):
    """The model file is missing, of an unknown format, truncated or corrupt."""


class UnsupportedOperatorError(AutoglmError):
    """The model uses an operator the TVM frontend cannot import."""


class ToolchainError(AutoglmError):
    """A compiler, emulator or SDK the target needs is not installed."""


class CompileFailure(AutoglmError):
    """TVM failed to build the model for the target."""


class VerificationError(AutoglmError):
    """The compiled model disagrees with the reference runtime beyond tolerance."""


class ArtifactError(AutoglmError):
    """An artifact directory is incomplete, tampered with, or built for another machine."""
