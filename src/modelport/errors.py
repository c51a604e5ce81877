"""Errors a user can act on.

Every message says what was asked, what is available, and the fix. The CLI prints them as one paragraph
without a traceback (``--debug`` shows it); the Python API raises them as ordinary exceptions.
"""

from __future__ import annotations


class ModelportError(Exception):
    """Base class of every error modelport raises on purpose (bad input, missing runtime, failed check)."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message} Fix: {fix}")


class InputError(ModelportError):
    """The user asked for something that does not exist or does not fit (unknown name, bad value)."""


class CheckpointError(ModelportError):
    """A checkpoint cannot be read safely or does not fit the chosen architecture."""


class DatasetError(ModelportError):
    """A dataset is missing, incomplete or malformed."""


class ConversionError(ModelportError):
    """Export or lowering of a model failed."""


class ValidationError(ModelportError):
    """An artifact's outputs disagree with the reference beyond the tolerance."""


class RuntimeUnavailableError(ModelportError):
    """A runtime or device needed for a step is not present on this machine."""


class InferenceInputError(ModelportError):
    """An inference feed does not match the model's declared inputs (name, rank, shape, dtype, values)."""


class ManifestError(ModelportError):
    """A manifest or results file is missing, malformed or of an unknown schema version."""


def unknown_choice(kind: str, asked: str, available: list[str] | tuple[str, ...]) -> InputError:
    """Build the standard 'unknown X' error that lists what exists."""
    choices = ", ".join(sorted(available))
    return InputError(f"Unknown {kind} '{asked}'. Available: {choices}.", fix=f"pass one of the listed {kind}s.")


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``: how a third-party exception is quoted in one-paragraph errors
    and row statuses (their messages run to pages; the first line names the problem)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
