"""The service manager (seed 002): exactly-one services run by OCF agents across nodes.

Read top-down: `model` (definitions, pure), `metadata` and `ocf_codes`
(what agents say, pure), `placement` (who runs what, pure), then `ocf`
(the agent runner). The node role builds on these.
"""

from servergroup.services.metadata import AgentInfo, parse_metadata
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

__all__ = [
    "AgentInfo",
    "AgentRef",
    "DefinitionError",
    "Definitions",
    "DomainMember",
    "FailoverDomain",
    "Monitor",
    "Recovery",
    "Service",
    "StoredDefinitionError",
    "decode_domain",
    "decode_service",
    "encode_domain",
    "encode_service",
    "parse_definitions",
    "parse_metadata",
    "resolve",
]
