"""Names of a package loaded from their modules on first use (PEP 562).

A package whose modules are costly to import (the etcd client, the sender
of an image) lists where each name of its API lives and answers a name's
first use from there: a process that never uses a name never loads its
module. The package keeps the names under `TYPE_CHECKING` imports too, so
that type checkers see them as ever. A name must not also be the name of one
of the package's modules: importing that module sets the package's
attribute to the module, and the name is then never looked up here.

    _load = lazy_names(__name__, {"EtcdCoordinator": ".etcd"})

    def __getattr__(name: str) -> Any:
        return _load(name)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """The loader of `package`'s names: `name` comes from its module in `where`
    (absolute, or relative to `package` with a leading dot) and is kept in the
    package once loaded; an unknown name raises `AttributeError`, as usual."""

    def load(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return load
