"""Test kit for tongcrm and its plugins: database fixtures on SQLite and PostgreSQL, hermetic plugin hosts,
an app client, and (for channel plugins) the contract suites. Loaded as a pytest plugin (``pytest11``)."""
