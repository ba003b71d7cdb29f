"""Guest-host protocol v2: the pure codec and framing, the guest agent, the host channel relay.

Read it top-down: `protocol` (pure), `sockets` and `drops` (drivers'
helpers), then the two daemons' halves, `guest` and `relay`. Import from
those modules: this package re-exports nothing, so that the guest agent
(`python -m servergroup.guestcomm`) does not load the relay's inotify at
start.
"""
