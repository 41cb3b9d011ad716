"""Result stores: where the Hub records every task and answers queries about them.

One interface (:class:`ResultStore`), three backends: :class:`MemoryStore`,
:class:`SQLiteStore` (the default) and ``MongoStore`` (needs ``pymongo``; imported on first
use), and one query language (:mod:`.query`). Pick one with :func:`open_store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from corral.errors import StoreError
from corral.protocol.connection_files import STORE_FILE

from .base import ResultStore
from .memory import MemoryStore
from .query import match, validate_query
from .retention import RetentionSettings
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .mongodb import MongoStore

__all__ = [
    "MemoryStore",
    "MongoStore",
    "ResultStore",
    "RetentionSettings",
    "SQLiteStore",
    "match",
    "open_store",
    "validate_query",
]

_URL_FORMS = (
    "'memory', 'sqlite' (tasks.db in the cluster folder), 'sqlite:///absolute/path.db' "
    "(path percent-encoded; options ?mode=ro, ?max_size=BYTES) or 'mongodb://host:port/dbname'"
)


def open_store(
    url: str,
    cluster_dir: Path | None = None,
    cluster_id: str = "default",
    retention: RetentionSettings | None = None,
) -> ResultStore:
    """Open the result store named by ``url`` (one of the forms in ``_URL_FORMS``).

    ``cluster_dir`` holds the default SQLite file; ``cluster_id`` names the MongoDB
    collections, so clusters can share a database. ``retention`` bounds the store (see
    :mod:`.retention`; None keeps everything). A URL that names no store, or a store that
    cannot be opened, raises StoreError naming the URL.
    """
    if url == "memory":
        return MemoryStore(retention)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from .mongodb import MongoStore

        if not cluster_id or "$" in cluster_id or "\0" in cluster_id:
            raise StoreError(f"cluster id {cluster_id!r} cannot name MongoDB collections")
        return MongoStore(url, cluster_id, retention=retention)
    if url == "sqlite" or url.startswith("sqlite:"):
        return _open_sqlite(url, cluster_dir, retention)
    raise StoreError(f"unknown result store URL {url!r}: expected {_URL_FORMS}")


def _open_sqlite(
    url: str, cluster_dir: Path | None, retention: RetentionSettings | None
) -> SQLiteStore:
    if url == "sqlite":
        if cluster_dir is None:
            raise StoreError("result store URL 'sqlite' needs a cluster folder for tasks.db")
        return SQLiteStore(Path(cluster_dir) / STORE_FILE, retention=retention)
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.fragment:
        raise StoreError(f"bad SQLite result store URL {url!r}: expected {_URL_FORMS}")
    options: dict[str, Any] = {"retention": retention}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "mode" and value in ("ro", "rw"):
            options["read_only"] = value == "ro"
        elif name == "max_size" and value.isdigit():
            options["max_size"] = int(value)
        else:
            raise StoreError(
                f"bad option {name}={value!r} in result store URL {url!r}: "
                "use mode=ro|rw or max_size=BYTES"
            )
    return SQLiteStore(unquote(parts.path), **options)


def __getattr__(name: str) -> Any:
    """``MongoStore`` on first use, so that pymongo stays an optional dependency."""
    if name == "MongoStore":
        from .mongodb import MongoStore

        return MongoStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
