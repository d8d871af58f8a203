"""Audit: the append-only, hash-chained record of every admin change and every reveal of personal data."""

from tongcrm.audit import chain as _chain  # noqa: F401 - registers the listener that chains appended records
