"""The operator's web console: server-rendered pages under ``/console`` (see docs/console.md)."""
