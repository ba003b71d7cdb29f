"""`servergroup demo`: a readable script of steps, one part per capability.

Each step prints what it is about to show, then what happened. Parts are
added as capabilities land; today: ownership with fencing on the managed
local etcd, and group messaging between lab servers.
"""

from servergroup.demo.election import ElectionResult, run_election_demo
from servergroup.demo.messaging import MessagingResult, run_messaging_demo

__all__ = ["ElectionResult", "MessagingResult", "run_election_demo", "run_messaging_demo"]
