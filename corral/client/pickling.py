"""ipyparallel's serializer switches, and what they mean for corral.

corral always sends functions, lambdas and closures by value with cloudpickle and data with
pickle protocol 5 (zero-copy buffers); that is what ipyparallel's ``use_cloudpickle`` turns
on. So :func:`use_cloudpickle` and :func:`use_pickle` keep that one wire format (there is no
second one to switch to, and an engine never needs telling), and :func:`use_dill` is refused
with a clear error rather than silently ignored.
"""

from __future__ import annotations

__all__ = ["use_cloudpickle", "use_dill", "use_pickle"]


def use_cloudpickle() -> None:
    """Functions travel by value with cloudpickle: corral's only (and so current) format."""


def use_pickle() -> None:
    """Back to the default format, which in corral is cloudpickle for functions and pickle
    protocol 5 for data: nothing changes."""


def use_dill() -> None:
    """Refused: corral's wire format is pickle protocol 5 with cloudpickle, and changing the
    pickler of one side only would make results unreadable."""
    raise NotImplementedError(
        "corral serializes with cloudpickle and pickle protocol 5 only; dill is not supported "
        "(cloudpickle already sends functions, lambdas and closures by value)"
    )
