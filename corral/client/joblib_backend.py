"""A joblib parallel backend that runs ``joblib.Parallel`` batches on a corral view.

``lview.register_joblib_backend()`` (or :func:`register_view_backend`) registers a view under
the name ``"corral"``; :func:`register_joblib_backend` (ipyparallel's top-level function)
registers one that connects to the default cluster itself, or, as ipyparallel's, starts a
cluster of its own when none runs (stopped when joblib is done with the backend). Then
``with joblib.parallel_config(backend="corral"): joblib.Parallel(n_jobs=-1)(...)`` sends each
of joblib's batches as one task. ``n_jobs=-1`` means one worker per registered engine, and so
does a ``Parallel()`` given no ``n_jobs`` (joblib's default would be 1: one batch at a time). joblib
must be importable on the engines too: a batch is a joblib object that the engine calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.client.view import View
    from corral.cluster.cluster import Cluster

log = logging.getLogger("corral.client")

__all__ = ["register_joblib_backend", "register_view_backend"]

BACKEND_NAME = "corral"


def _backend_class() -> type[Any]:
    """The backend class, built on first use so that importing corral never imports joblib."""
    try:
        from joblib.parallel import ParallelBackendBase
    except ImportError:
        raise ImportError(
            "register_joblib_backend needs joblib: pip install joblib (on the engines too)"
        ) from None

    class CorralBackend(ParallelBackendBase):  # type: ignore[misc]
        """joblib's view of a corral view: batches become tasks, results come back through
        the task's future (joblib's callback runs on the client's I/O thread)."""

        supports_retrieve_callback = True
        supports_timeout = True
        uses_threads = False
        supports_sharedmem = False
        # joblib's n_jobs when the program sets none (``Parallel()``, as ipyparallel's joblib
        # example writes it): one worker per engine, as ipyparallel's backend always has
        default_n_jobs = -1

        def __init__(self, view: View | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._given_view = view
            self._own_view: View | None = None
            self._own_cluster: Cluster | None = None
            self._outstanding: list[Any] = []

        @property
        def _view(self) -> View:
            """The view batches run on (ipyparallel's attribute name): the one registered, or
            a load-balanced view of a Client of the default cluster, made when first needed
            and closed by :meth:`terminate` (joblib calls it after each ``Parallel`` call);
            with no default cluster running, of a cluster started for it, which
            :meth:`terminate` stops."""
            if self._given_view is not None:
                return self._given_view
            if self._own_view is None:
                from corral.client.client import Client
                from corral.cluster.cluster import Cluster
                from corral.errors import ConnectionError

                try:
                    client = Client()
                except ConnectionError as err:  # none runs: one of its own, as ipyparallel's
                    self._own_cluster = Cluster()
                    log.info("joblib: no default cluster (%s): starting one", err)
                    client = self._own_cluster.start_and_connect_sync()
                self._own_view = client.load_balanced_view()
            return self._own_view

        @property
        def view(self) -> View:
            return self._view

        def terminate(self) -> None:
            super().terminate()
            own, self._own_view = self._own_view, None
            cluster, self._own_cluster = self._own_cluster, None
            if own is not None:
                own.client.close()
            if cluster is not None:
                cluster.stop_cluster_sync()

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            targets = self.view.targets
            client = self.view.client
            engines = max(1, len(client if targets is None else client.resolve_targets(targets)))
            if n_jobs is None or n_jobs < 0:
                return max(1, engines + 1 + n_jobs) if n_jobs is not None else engines
            return min(n_jobs, engines)

        def submit(self, func: Callable[[], Any], callback: Any = None) -> Any:
            result = self.view.apply_async(func)
            self._outstanding = [r for r in self._outstanding if not r.done()]
            self._outstanding.append(result)
            if callback is not None:
                result.add_done_callback(callback)
            return result

        def retrieve_result_callback(self, out: Any) -> Any:
            return out.get()

        def abort_everything(self, ensure_ready: bool = True) -> None:
            """joblib gave up (a batch failed): abort what is still queued or running."""
            for result in self._outstanding:
                if not result.done():
                    result.abort()
            self._outstanding = []

        def get_nested_backend(self) -> tuple[Any, int | None]:
            from joblib._parallel_backends import SequentialBackend

            return SequentialBackend(nesting_level=self.nesting_level + 1), None

    return CorralBackend


def register_joblib_backend(name: str | None = None, make_default: bool = False) -> None:
    """ipyparallel's ``register_joblib_backend``: a backend that, whenever joblib uses it,
    connects a Client to the default cluster (``Client()``) and runs batches load-balanced on
    all its engines; with no default cluster running, it starts a temporary ``Cluster()`` for
    the call and stops it after. Registered as ``name``; by default both as ``"corral"`` and as
    ``"ipyparallel"``, the name programs written for ipyparallel ask joblib for."""
    from joblib.parallel import register_parallel_backend

    backend = _backend_class()
    for each in [name] if name is not None else [BACKEND_NAME, "ipyparallel"]:
        register_parallel_backend(each, backend, make_default)


def register_view_backend(view: View, name: str = BACKEND_NAME, make_default: bool = False) -> None:
    """Register ``view`` as joblib backend ``name`` (``make_default``: also make it the
    backend joblib uses when none is named). A DirectView lends its engines to a
    load-balanced view: each batch must run once, on one of them, not on all."""
    from joblib.parallel import register_parallel_backend

    from corral.client.view import DirectView

    if isinstance(view, DirectView):
        targets = view.targets
        view = view.client.load_balanced_view(None if targets == "all" else targets)

    backend = _backend_class()
    register_parallel_backend(name, lambda **kwargs: backend(view, **kwargs), make_default)
