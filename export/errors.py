"""Exceptions raised by the export side."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export could not be completed; no output file was written."""


class CheckpointError(ExportError, ValueError):
    """A checkpoint folder is incomplete, unreadable or not of a supported architecture."""


class FidelityError(ExportError):
    """The exported graph disagrees with the torch reference beyond the allowed budget."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
