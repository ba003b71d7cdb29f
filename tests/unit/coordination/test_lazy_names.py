"""`servergroup.coordination` loads its costly parts on first use, and they are the same.

A command that may not talk to etcd (`image receive` with nothing to record
in) imports the package for its types and errors only; the etcd client, the
etcd processes (and urllib), the session driver, the election recipe and the
memory store load when a name of theirs is first used. So do the transfer
records and their recorder (`servergroup.transfers`).
"""

from __future__ import annotations

import pytest

import servergroup.coordination as coordination
from servergroup.coordination import election, etcd, etcd_process, keeper, local_etcd, memory
from tests.fixtures.imports import loaded_after as modules_loaded_after

#: Modules that must not load with the image commands' imports.
LATER = (
    "aetcd",
    "grpc",
    "urllib.request",
    "servergroup.coordination.etcd",
    "servergroup.coordination.etcd_process",
    "servergroup.coordination.local_etcd",
    "servergroup.coordination.election",
    "servergroup.coordination.keeper",
    "servergroup.coordination.memory",
    "servergroup.transfers.record",
    "servergroup.transfers.recorder",
)


def loaded_after(statement: str) -> list[str]:
    return modules_loaded_after(statement, LATER)


def test_the_image_commands_start_without_the_etcd_side() -> None:
    assert loaded_after("import servergroup.cli.main, servergroup.cli.image") == []
    # Nothing to record in (no etcd configured, none running): still nothing of it.
    nowhere = (
        "import pathlib, tempfile; "
        "from servergroup.config import Config; "
        "from servergroup.transfers import recording_endpoints; "
        "config = Config(state_dir=pathlib.Path(tempfile.mkdtemp())); "
        "assert recording_endpoints(config) == ()"
    )
    assert loaded_after(nowhere) == [
        "servergroup.coordination.etcd_process",
        "servergroup.coordination.local_etcd",
    ]


def test_a_lazy_name_loads_its_module() -> None:
    assert loaded_after("from servergroup.coordination import Session") == [
        "servergroup.coordination.keeper"
    ]
    assert loaded_after("from servergroup.transfers import Transfer") == [
        "servergroup.transfers.record"
    ]
    # connect() is there at once, and loads the managed etcd's code only when called.
    assert loaded_after("from servergroup.coordination import connect") == []


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("EtcdCoordinator", etcd),
        ("Ownership", election),
        ("OwnershipLost", election),
        ("NotOwner", election),
        ("EtcdCluster", etcd_process),
        ("start_cluster", etcd_process),
        ("Session", keeper),
        ("LocalEtcd", local_etcd),
        ("resolve_endpoints", local_etcd),
        ("MemoryCoordinator", memory),
        ("MemoryStore", memory),
    ],
)
def test_a_lazy_name_is_its_module_s_object(name: str, module: object) -> None:
    assert getattr(coordination, name) is getattr(module, name)
    assert name in coordination.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        _ = coordination.Nothing
