"""Checkpoint replication (seed 004): Remus-style protection of a stateful Python service."""
