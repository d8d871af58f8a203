"""The sync engine: cursors and leases, page → normalise → resolve → bulk upsert → points → outbox."""
