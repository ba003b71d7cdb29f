"""`servergroup demo`: a readable script of steps, one part per capability.

Each step prints what it is about to show, then what happened. Parts are
added as capabilities land; today: ownership with fencing on the managed
local etcd.
"""

from servergroup.demo.election import ElectionResult, run_election_demo

__all__ = ["ElectionResult", "run_election_demo"]
