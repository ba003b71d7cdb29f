"""The example protected services: `counter` and `kv` (whole state in regions)."""
