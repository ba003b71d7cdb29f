"""The service manager (seed 002): exactly-one services run by OCF agents across nodes.

Read top-down: `model` (definitions, pure), `metadata` and `ocf_codes`
(what agents say, pure), `placement` (who runs what where, pure), then
`ocf` (the agent runner) and `memory_agent` (the same protocol in memory,
for tests of what uses agents), and `journal` (the exactly-one checker
the fault tests and the failover benchmark read). `store` is the key space
and its records; `status` the views `service list/status` print; `client`
the library API: discovery (`where`, `watch_master`), reads and the
operator's writes. The node role builds on these; the plan is in
docs/design/services.md.
"""

from servergroup.services.client import (
    MasterEvent,
    MasterGone,
    MasterMoved,
    MasterUnreadable,
    ServiceRefused,
    UnknownService,
    watch_master,
    where,
)
from servergroup.services.journal import JournalError, Record, Violation, check
from servergroup.services.memory_agent import MemoryAgent, MemoryResource
from servergroup.services.metadata import AgentInfo, MetadataError, parse_metadata
from servergroup.services.model import (
    AgentRef,
    DefinitionError,
    Definitions,
    DomainMember,
    FailoverDomain,
    Monitor,
    Recovery,
    Service,
    StoredDefinitionError,
    decode_domain,
    decode_service,
    encode_domain,
    encode_service,
    parse_definitions,
    resolve,
)
from servergroup.services.ocf import Agent, AgentNotFound, AgentResult, OcfAgent, resolve_agent
from servergroup.services.ocf_codes import OcfStatus, Severity, severity
from servergroup.services.placement import (
    Decision,
    Demote,
    Disable,
    Failure,
    InstanceId,
    Owner,
    Promote,
    Relocation,
    Restart,
    Snapshot,
    Start,
    Stop,
    StopReason,
    decide,
    next_timer,
)

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentNotFound",
    "AgentRef",
    "AgentResult",
    "Decision",
    "DefinitionError",
    "Definitions",
    "Demote",
    "Disable",
    "DomainMember",
    "FailoverDomain",
    "Failure",
    "InstanceId",
    "JournalError",
    "MasterEvent",
    "MasterGone",
    "MasterMoved",
    "MasterUnreadable",
    "MemoryAgent",
    "MemoryResource",
    "MetadataError",
    "Monitor",
    "OcfAgent",
    "OcfStatus",
    "Owner",
    "Promote",
    "Record",
    "Recovery",
    "Relocation",
    "Restart",
    "Service",
    "ServiceRefused",
    "Severity",
    "Snapshot",
    "Start",
    "Stop",
    "StopReason",
    "StoredDefinitionError",
    "UnknownService",
    "Violation",
    "check",
    "decide",
    "decode_domain",
    "decode_service",
    "encode_domain",
    "encode_service",
    "next_timer",
    "parse_definitions",
    "parse_metadata",
    "resolve",
    "resolve_agent",
    "severity",
    "watch_master",
    "where",
]
