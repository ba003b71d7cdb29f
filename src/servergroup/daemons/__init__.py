"""The daemons and set-ups that join several capabilities: `servergroup host`, `up`/`down`."""
