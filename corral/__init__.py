"""corral: interactive parallel computing over ZeroMQ.

Public API only; imports are lazy so that an engine process does not pay for the client.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "corral.client.client",
    "DirectView": "corral.client.view",
    "LoadBalancedView": "corral.client.view",
    "AsyncResult": "corral.client.asyncresult",
    "AsyncMapResult": "corral.client.asyncresult",
    "Cluster": "corral.cluster.cluster",
    "Reference": "corral.protocol.references",
    "interactive": "corral.protocol.references",
    "Dependency": "corral.protocol.dependency",
    "depend": "corral.client.dependencies",
    "require": "corral.client.dependencies",
    "errors": "corral",
}

__all__ = sorted(_EXPORTS)
_EXPORTS["ViewExecutor"] = "corral.client.executor"
_EXPORTS["register_joblib_backend"] = "corral.client.joblib_backend"
__all__ += ["ViewExecutor", "load_ipython_extension", "register_joblib_backend"]


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext corral``: the %px magics (see corral.client.magics)."""
    from corral.client.magics import load_ipython_extension as load

    load(shell)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    import importlib

    if name == "errors":
        return importlib.import_module("corral.errors")
    return getattr(importlib.import_module(module_name), name)
