"""Consent: per purpose and per sender signature, with proof; the contact policy asks :func:`may_contact`."""
