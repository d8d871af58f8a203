"""Tiers (等级): a versioned ladder of thresholds on qualifying metrics, immediate upgrades, downgrades only at
review time, overrides, history and projections. :func:`tongcrm.tiers.service.reevaluate` is the entry point for
ingest and POS."""
