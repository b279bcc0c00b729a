"""dibs: let many coding agents work on one git repository at once without colliding.

The public API, re-exported here::

    import dibs

    with dibs.Coordinator.open(".") as coord:
        coord.register("agent-1")
        coord.claim(["issue:ROOSE-158"], wait=30)

Names are imported on first use (PEP 562), so ``import dibs`` costs almost nothing: the CLI
imports this package on every editor hook.
"""

from __future__ import annotations

from dibs.ground.version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dibs.core.resources import Resource, overlaps, parse_resource
    from dibs.ground.errors import (
        AuthError,
        Conflict,
        CorruptLog,
        DibsError,
        InvalidResource,
        InvalidSetting,
        LeaseLost,
        LockTimeout,
        NotFound,
        Refused,
        StoreError,
        StoreIOError,
        StoreUnavailable,
        UsageError,
    )
    from dibs.ground.heap import settle_heap
    from dibs.integrations.setup import init
    from dibs.service import Coordinator
    from dibs.store.local import LocalStore
    from dibs.store.memory import MemoryStore
    from dibs.store.postgres import PostgresStore


_EXPORTS = {
    "AuthError": "dibs.ground.errors",
    "Conflict": "dibs.ground.errors",
    "Coordinator": "dibs.service",
    "CorruptLog": "dibs.ground.errors",
    "DibsError": "dibs.ground.errors",
    "InvalidResource": "dibs.ground.errors",
    "InvalidSetting": "dibs.ground.errors",
    "LeaseLost": "dibs.ground.errors",
    "LocalStore": "dibs.store.local",
    "LockTimeout": "dibs.ground.errors",
    "MemoryStore": "dibs.store.memory",
    "NotFound": "dibs.ground.errors",
    "PostgresStore": "dibs.store.postgres",
    "Refused": "dibs.ground.errors",
    "Resource": "dibs.core.resources",
    "StoreError": "dibs.ground.errors",
    "StoreIOError": "dibs.ground.errors",
    "StoreUnavailable": "dibs.ground.errors",
    "UsageError": "dibs.ground.errors",
    "init": "dibs.integrations.setup",
    "overlaps": "dibs.core.resources",
    "parse_resource": "dibs.core.resources",
    "settle_heap": "dibs.ground.heap",
}

__all__ = [
    "AuthError",
    "Conflict",
    "Coordinator",
    "CorruptLog",
    "DibsError",
    "InvalidResource",
    "InvalidSetting",
    "LeaseLost",
    "LocalStore",
    "LockTimeout",
    "MemoryStore",
    "NotFound",
    "PostgresStore",
    "Refused",
    "Resource",
    "StoreError",
    "StoreIOError",
    "StoreUnavailable",
    "UsageError",
    "__version__",
    "init",
    "overlaps",
    "parse_resource",
    "settle_heap",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dibs' has no attribute {name!r}")
    import importlib  # here, not at the top: `import dibs` is on every CLI call

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
