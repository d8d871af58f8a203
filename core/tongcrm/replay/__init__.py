"""Replay guard for platform callbacks: a signed call is applied once, across every tongcrm process."""
