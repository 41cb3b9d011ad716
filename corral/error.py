"""ipyparallel's name for the error module: ``from corral import error`` (or
``import corral as ipp; ipp.error.RemoteError``) finds every error class here.

The one error tree lives in :mod:`corral.errors`; this module only gives it the second name.
"""

from corral.errors import (
    AlreadyDisplayedError,
    CompositeError,
    ConnectionError,
    CorralError,
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    InvalidTarget,
    IPythonError,
    KernelError,
    MultipleInstanceError,
    NoEnginesRegistered,
    RemoteError,
    RemoteErrorInfo,
    TaskAborted,
    TaskRejectError,
    TaskTimeout,
    TimeoutError,
    UnmetDependency,
    collect_exceptions,
    unwrap_exception,
    wrap_exception,
)

__all__ = [
    "AlreadyDisplayedError",
    "CompositeError",
    "ConnectionError",
    "CorralError",
    "DependencyTimeout",
    "EngineError",
    "IPythonError",
    "ImpossibleDependency",
    "InvalidDependency",
    "InvalidTarget",
    "KernelError",
    "MultipleInstanceError",
    "NoEnginesRegistered",
    "RemoteError",
    "RemoteErrorInfo",
    "TaskAborted",
    "TaskRejectError",
    "TaskTimeout",
    "TimeoutError",
    "UnmetDependency",
    "collect_exceptions",
    "unwrap_exception",
    "wrap_exception",
]
