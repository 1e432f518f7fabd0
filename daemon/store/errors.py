"""The store's exceptions: everything it raises derives from `StoreError`."""

from __future__ import annotations


class StoreError(Exception):
    """Root of every error the store raises (wrapping psycopg and pool errors)."""


class InvalidRowError(StoreError, ValueError):
    """An observation that can never be stored (naive datetime, non-JSON extras, ...).

    Raised to the caller of `put` so a bad value is rejected where it was made,
    instead of poisoning a batch later.
    """


class StoreClosedError(StoreError):
    """The writer is not running (not entered yet, closing, or stopped)."""
