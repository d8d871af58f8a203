"""Audit: the append-only record of every admin change and every reveal of personal data."""
