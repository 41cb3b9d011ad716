"""corral: interactive parallel computing over ZeroMQ.

Public API only; imports are lazy so that an engine process does not pay for the client.
"""

from __future__ import annotations

from typing import Any

from corral import native as _native

__version__ = "0.1.0"
# before any other submodule: the compiled build, or the sources when it does not match them
_native.install()

_EXPORTS = {
    "Client": "corral.client.client",
    "DirectView": "corral.client.view",
    "LoadBalancedView": "corral.client.balanced",
    "AsyncResult": "corral.client.asyncresult",
    "AsyncMapResult": "corral.client.asyncmapresult",
    "Cluster": "corral.cluster.cluster",
    "Reference": "corral.protocol.references",
    "interactive": "corral.protocol.references",
    "Dependency": "corral.client.dependencies",
    "depend": "corral.client.dependencies",
    "require": "corral.client.dependencies",
    "errors": "corral",
    # ipyparallel's public names (issue 11): its error tree, module and helpers
    **{
        name: "corral.errors"
        for name in (
            "AlreadyDisplayedError",
            "CompositeError",
            "DependencyTimeout",
            "EngineError",
            "IPythonError",
            "ImpossibleDependency",
            "InvalidDependency",
            "KernelError",
            "NoEnginesRegistered",
            "RemoteError",
            "TaskAborted",
            "TaskRejectError",
            "TaskTimeout",
            "TimeoutError",
            "UnmetDependency",
            "collect_exceptions",
        )
    },
    "error": "corral",
    "AsyncHubResult": "corral.client.asyncresult",
    "BroadcastView": "corral.client.broadcast",
    "RemoteFunction": "corral.client.remotefunction",
    "ParallelFunction": "corral.client.remotefunction",
    "remote": "corral.client.remotefunction",
    "parallel": "corral.client.remotefunction",
    "use_cloudpickle": "corral.client.pickling",
    "use_pickle": "corral.client.pickling",
    "use_dill": "corral.client.pickling",
    "ALL_COMPLETED": "corral.client.asyncresult",
    "FIRST_COMPLETED": "corral.client.asyncresult",
    "FIRST_EXCEPTION": "corral.client.asyncresult",
}
version_info = (0, 1, 0)

_EXPORTS["ViewExecutor"] = "corral.client.executor"
_EXPORTS["register_joblib_backend"] = "corral.client.joblib_backend"
# ipyparallel's serializer, cluster manager and remaining error helpers (issue 11)
_EXPORTS.update(
    {
        **dict.fromkeys(
            (
                "PrePickled",
                "can",
                "can_map",
                "uncan",
                "uncan_map",
                "serialize_object",
                "deserialize_object",
                "pack_apply_message",
                "unpack_apply_message",
            ),
            "corral.protocol.canning",
        ),
        **dict.fromkeys(
            ("MultipleInstanceError", "wrap_exception", "unwrap_exception"), "corral.errors"
        ),
        "dependent": "corral.client.dependencies",
        "ClusterManager": "corral.cluster.manager",
    }
)
__all__ = sorted([*_EXPORTS, "version_info", "load_ipython_extension"])


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext corral``: the %px magics (see corral.client.magics)."""
    from corral.client.magics import load_ipython_extension as load

    load(shell)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    import importlib

    if name in ("errors", "error"):
        return importlib.import_module(f"corral.{name}")
    return getattr(importlib.import_module(module_name), name)


def __dir__() -> list[str]:
    """Every public name, for tab completion (they are imported lazily)."""
    return sorted({*globals(), *__all__})
