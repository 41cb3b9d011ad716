"""Imported at start-up by every process of the compat run's corral cluster (the shim puts
this folder first on their PYTHONPATH; nothing else uses it).

The peer's tests run code on engines that imports ``ipyparallel.datapub`` (its
``publish_data``); on a corral engine that module is pointed at corral's
(:mod:`corral.datapub`), as the shim points ipyparallel's public names at corral's in the
test process. Lazily: only a process that imports ``ipyparallel.datapub`` imports corral's.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence

ALIASED = "ipyparallel.datapub"


class _DatapubAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname == ALIASED else None

    def exec_module(self, module: types.ModuleType) -> None:
        from corral.datapub import publish_data

        module.__dict__["publish_data"] = publish_data


sys.meta_path.insert(0, _DatapubAlias())
