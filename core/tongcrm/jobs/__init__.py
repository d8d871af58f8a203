"""Work that happens later: the transactional outbox, jobs, leases and the in-process runner."""
