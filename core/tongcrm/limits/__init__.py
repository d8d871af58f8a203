"""Limits that hold across every worker and machine: call windows per key, kept in the database."""
