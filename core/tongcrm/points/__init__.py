"""Points: an append-only, idempotent ledger of entries with FIFO lots, cached balances and versioned earning
rules. :mod:`tongcrm.points.service` is the entry point for the rest of tongcrm (ingest calls
:func:`~tongcrm.points.service.apply_orders`)."""
