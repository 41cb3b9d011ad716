"""``from corral.datapub import publish_data``: ipyparallel's import path for
:func:`corral.engine.datapub.publish_data` (call it in a task on an engine)."""

from corral.engine.datapub import publish_data

__all__ = ["publish_data"]
