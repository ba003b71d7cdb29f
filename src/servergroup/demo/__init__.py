"""`servergroup demo`: a readable script of steps, one part per capability.

Each step prints what it is about to show, then what happened. Parts are
added as capabilities land; today: ownership with fencing on the managed
local etcd, group messaging between servers, a server's vCPUs scaled down
and up, an HA service failing over when its host freezes, one image
multicast to lab hosts, and a replicated kv service surviving kill -9 of
its primary.
"""

from servergroup.demo.distribution import (
    DistributionResult,
    distribution_lab_name,
    run_distribution_demo,
)
from servergroup.demo.election import ElectionResult, run_election_demo
from servergroup.demo.messaging import MessagingResult, run_messaging_demo
from servergroup.demo.replication import ReplicationResult, run_replication_demo
from servergroup.demo.scaling import ScalingResult, run_scaling_demo

__all__ = [
    "DistributionResult",
    "ElectionResult",
    "MessagingResult",
    "ReplicationResult",
    "ScalingResult",
    "distribution_lab_name",
    "run_distribution_demo",
    "run_election_demo",
    "run_messaging_demo",
    "run_replication_demo",
    "run_scaling_demo",
]
