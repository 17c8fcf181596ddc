"""The exceptions layoutconv raises.

Every error derives from :class:`LayoutError`, so ``except layoutconv.LayoutError``
catches anything the package reports on purpose.  Messages follow one shape:
what is wrong, what was expected, what was received, and what to do about it.
"""

from __future__ import annotations


class LayoutError(Exception):
    """Base class of every error raised by layoutconv."""


class ConfigError(LayoutError, ValueError):
    """A convolution's hyperparameters or weights are invalid or inconsistent."""


class ShapeError(ConfigError):
    """An array does not have the shape its declared layout requires."""


class UnsupportedError(LayoutError):
    """The target framework (or file format) cannot express this convolution."""


class FrameworkMissingError(LayoutError, ImportError):
    """An optional framework needed for this call is not installed."""


class FileFormatError(LayoutError):
    """A weight file is missing, truncated, of the wrong type, or not understood."""


class UnsafeFileError(FileFormatError):
    """A weight file contains something a reader refuses on purpose (links, bombs, ...)."""


class OutputError(LayoutError):
    """An output path cannot be written as asked (exists, is a directory, read-only, missing parent)."""


class VerificationError(LayoutError):
    """A file was written but failed verification, so it was not kept (the CLI exits with status 1)."""


def fail(cls: type[LayoutError], what: str, expected: str, received: str, remedy: str = "") -> LayoutError:
    """Build an error whose message has the four parts in a fixed order."""
    msg = f"{what}. Expected {expected}. Received {received}."
    if remedy:
        msg += f" {remedy}"
    return cls(msg)
