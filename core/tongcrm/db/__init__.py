"""Database: one MetaData with a naming convention, engines for SQLite and PostgreSQL, and migrations."""
