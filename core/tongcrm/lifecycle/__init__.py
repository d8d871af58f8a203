"""Lifecycle stages derived from orders (prospect, new, repeat, dormant, churned), with per-brand thresholds,
a history of every change and a ``lifecycle_changed`` event for campaigns to trigger on."""
