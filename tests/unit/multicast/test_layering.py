"""The pure cores of `servergroup.multicast` import no I/O, no clock, no threads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import servergroup.multicast

PURE = ["protocol", "rate", "sending", "receiving", "config"]
FORBIDDEN = {"asyncio", "socket", "subprocess", "threading", "time", "os", "selectors"}
PACKAGE = Path(servergroup.multicast.__file__).parent


@pytest.mark.parametrize("module", PURE)
def test_a_pure_core_imports_no_io(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("servergroup.multicast."):
                assert node.module.rsplit(".", 1)[1] in PURE, f"{module} imports {node.module}"
    assert not imported & FORBIDDEN
