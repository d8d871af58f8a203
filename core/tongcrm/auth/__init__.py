"""Access control: API keys with roles, checked on every route except health and schema."""
