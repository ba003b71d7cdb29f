"""Command-line interface: one module per command group; options in, `run()` out, no logic."""
