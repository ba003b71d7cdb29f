"""Image distribution: one sender, many receivers, UDP multicast with TCP repair (seed 001).

Read top-down: `protocol` (packet codecs), `rate` (the loss-driven rate
controller), `sending` and `receiving` (the two state machines) and
`config` are pure; `transport` holds the asyncio socket drivers; `sender`
and `receiver` run one transfer each (`run_sender`, `run_receiver`), which is
also the library API.
"""
