"""Entitlements (权益): the catalogue of benefit kinds, grants per member with usage, and fulfilment through
``entitlement_providers`` plugins."""
