"""The MongoDB result store (optional: needs ``pymongo``, imported only here).

Collections ``<cluster_id>.tasks`` (one document per task) and ``<cluster_id>.buffers``
(chunks of large result buffers) in the database named by the URL (default ``corral``).
A task document's ``_id`` is an increasing integer assigned when the store first sees the
task: the submission order, total and the same as in the other stores (``submitted`` may
be missing on pending records, and ties). ``msg_id`` has a unique index.

Result buffers up to 4 MiB in all are kept inline as a BSON binary list; larger ones (a
document is capped at 16 MiB) are split into chunk documents tagged with a fresh
generation id that the task document points to. Chunks are written before the pointer
and stale generations deleted after it, so a crash leaves orphans, never a dangling
pointer. A request's own buffers (``buffers``, kept for ``Client.resubmit``) are kept the
same way: inline up to 1 MiB, else chunks tagged ``field: "buffers"`` behind a
``_request_buffers`` pointer (result chunks carry no ``field``, as before).

Writes are BSON-encoded in the caller's thread (bad values fail at the call) and sent by
the shared :class:`~.base.BatchWriter` as ordered bulk writes.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import bson
from bson import ObjectId
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from pymongo import DESCENDING, DeleteMany, MongoClient, ReplaceOne, UpdateOne
from pymongo.errors import PyMongoError

from corral.errors import StoreError

from .base import (
    BUFFERS_FIELD,
    REQUEST_BUFFERS_FIELD,
    SCALAR_FIELD_CATEGORIES,
    BatchWriter,
    ResultStore,
    WriteOp,
    check_keys,
    check_msg_ids,
    in_submission_order,
    project,
    validate_record,
)
from .query import Atom, Condition, matches, parse_query, split_query
from .retention import MIB, Purge, RetentionSettings

logger = logging.getLogger("corral.controller.store")

INLINE_LIMIT = 4 * 1024 * 1024
REQUEST_INLINE_LIMIT = 1024 * 1024
CHUNK_SIZE = 4 * 1024 * 1024
#: A document must stay under 16 MiB with the bookkeeping and inline buffers added to it.
MAX_DOCUMENT = 16 * 1024 * 1024 - INLINE_LIMIT - REQUEST_INLINE_LIMIT - 64 * 1024
#: Per buffer field: the pointer to its chunks, the most kept inline, and the ``field`` tag of
#: its chunk documents (None: untagged, the result buffers of every version).
_BUFFER_KINDS: tuple[tuple[str, str, int, str | None], ...] = (
    (BUFFERS_FIELD, "_buffers", INLINE_LIMIT, None),
    (REQUEST_BUFFERS_FIELD, "_request_buffers", REQUEST_INLINE_LIMIT, REQUEST_BUFFERS_FIELD),
)
_IDS_PER_QUERY = 10_000
#: Purged bytes after which the collections are compacted, giving the space to the file system.
COMPACT_AFTER = 64 * MIB
_UNCHANGED: Any = object()

Payload = tuple[RawBSONDocument, int, Any, Any] | None


def mongo_filter(atoms: list[Atom]) -> dict[str, Any]:
    """A MongoDB filter with exactly the semantics of the atoms: MongoDB, too, treats a
    missing field as null, and the fields atoms test never hold arrays."""
    parts: list[dict[str, Any]] = []
    for atom in atoms:
        name = atom.field
        if atom.kind == "never":
            parts.append({"_id": {"$in": []}})
        elif atom.kind == "null":
            parts.append({name: None})
        elif atom.kind == "not_null":
            parts.append({name: {"$ne": None}})
        elif atom.kind == "compare":
            parts.append({name: {atom.operator: atom.value}})
        else:
            values = [*atom.values, *([None] if atom.with_null else [])]
            parts.append({name: {"$in" if atom.kind == "in" else "$nin": values}})
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _chunk_documents(
    gen: ObjectId, msg_id: str, buffers: list[Any], tag: str | None = None
) -> list[dict[str, Any]]:
    documents = []
    for index, buffer in enumerate(buffers):
        view = memoryview(buffer)
        for part, start in enumerate(range(0, max(len(view), 1), CHUNK_SIZE)):
            data = bytes(view[start : start + CHUNK_SIZE])
            document = {"gen": gen, "msg_id": msg_id, "index": index, "part": part, "data": data}
            if tag is not None:
                document["field"] = tag
            documents.append(document)
    return documents


def _stale_chunks(msg_id: str, tag: str | None, gen: ObjectId | None) -> dict[str, Any]:
    """The chunks of one buffer field of ``msg_id`` other than generation ``gen``."""
    query: dict[str, Any] = {"msg_id": msg_id, "field": tag}  # None matches a missing field
    if gen is not None:
        query["gen"] = {"$ne": gen}
    return query


class MongoStore(ResultStore):
    """Result store in a MongoDB database; see the module docs for the layout."""

    persists_purges = True

    def __init__(
        self,
        url: str,
        collection: str = "default",
        *,
        max_batch: int = 1000,
        timeout_ms: int = 10_000,
        retention: RetentionSettings | None = None,
    ) -> None:
        self._setup_retention(retention)
        self._purged_bytes = 0
        self._closed = False
        self._client: MongoClient[dict[str, Any]] | None = None
        try:
            self._client = MongoClient(url, serverSelectionTimeoutMS=timeout_ms, tz_aware=False)
            self._client.admin.command("ping")
            database = self._client.get_default_database("corral")
            self._tasks = database[f"{collection}.tasks"]
            self._chunks = database[f"{collection}.buffers"]
            self._tasks.create_index("msg_id", unique=True)
            self._chunks.create_index([("gen", 1), ("index", 1), ("part", 1)])
            self._chunks.create_index("msg_id")
            self._purged = database[f"{collection}.purged"]
            last = self._tasks.find_one({}, {"_id": 1}, sort=[("_id", -1)])
            newest_purge = self._purged.find_one({}, {"n": 1}, sort=[("n", DESCENDING)])
            recalled: list[tuple[str, str]] = []
            if self.retention is not None:
                self._purged.create_index("n")
                newest = self._purged.find(
                    {}, sort=[("n", DESCENDING)], limit=self.purges_remembered
                )
                recalled = [(doc["_id"], doc["why"]) for doc in newest][::-1]
        except (PyMongoError, ValueError, TypeError) as exc:
            if self._client is not None:
                self._client.close()
            raise StoreError(f"cannot open the MongoDB result store {url!r}: {exc}") from exc
        self.name = f"{database.name}.{collection}"
        self._seq = itertools.count(0 if last is None else int(last["_id"]) + 1)
        self._purge_seq = itertools.count(1 if newest_purge is None else newest_purge["n"] + 1)
        self._recall_purges(recalled)
        self._writer: BatchWriter[Payload] = BatchWriter(
            self._apply, name=f"mongodb writer ({self.name})", max_batch=max_batch
        )
        if self.retention is not None:
            try:
                self._restore_retention(self._stored_sizes())
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------ writes

    def background_threads(self) -> list[threading.Thread]:
        return [self._writer.thread]

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        self._upsert(msg_id, record)

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        self._upsert(msg_id, changes)

    def _upsert(self, msg_id: str, fields: dict[str, Any]) -> None:
        checked = self._omit_large_buffers(validate_record(msg_id, fields))
        status = checked.get("status")
        buffers = checked.pop(BUFFERS_FIELD, _UNCHANGED)
        request = checked.pop(REQUEST_BUFFERS_FIELD, _UNCHANGED)
        try:
            document = RawBSONDocument(bson.encode(checked))
        except (BSONError, OverflowError, TypeError, ValueError) as exc:
            raise StoreError(f"record {msg_id!r} cannot be stored in MongoDB: {exc}") from None
        if len(document.raw) > MAX_DOCUMENT:
            raise StoreError(
                f"record {msg_id!r} is {len(document.raw)} bytes without its "
                f"buffers; MongoDB takes at most {MAX_DOCUMENT}"
            )
        payload = (document, next(self._seq), buffers, request)
        self._writer.submit(WriteOp("upsert", (msg_id,), payload))
        if self.retention is not None:
            size = len(document.raw)
            for stored in (buffers, request):
                if stored is not _UNCHANGED and stored is not None:
                    size += sum(map(len, stored))  # bytes or flat byte views
            self._account(msg_id, {"status": status}, size)

    def drop_records(self, msg_ids: Sequence[str]) -> None:
        ids = tuple(check_msg_ids(msg_ids))
        if ids:
            self._forget(ids)
            self._writer.submit(WriteOp("drop", ids, None))
        else:
            self._writer.check()

    def _remember(self, purges: list[Purge]) -> None:
        """(Writer thread) Why these records were purged, in ``<cluster_id>.purged`` (one
        document a msg_id, numbered), the newest :attr:`purges_remembered` kept; before
        their deletes, as in the SQLite store."""
        newest = 0
        requests = []
        for msg_id, why in self._reasons_to_write(purges):
            newest = next(self._purge_seq)
            requests.append(ReplaceOne({"_id": msg_id}, {"n": newest, "why": why}, upsert=True))
        self._purged.bulk_write(requests, ordered=True)
        self._purged.delete_many({"n": {"$lte": newest - self.purges_remembered}})

    def _apply(self, batch: list[WriteOp[Payload]]) -> None:
        """One ordered bulk write; every request is idempotent, so the writer may retry."""
        purges = self._take_unwritten_purges()
        if purges:
            try:
                self._remember(purges)
            except PyMongoError as exc:  # the records' writes matter more: they go on
                logger.warning(
                    "result store %s: why records were purged not kept: %s", self.name, exc
                )
        requests: list[Any] = []
        chunks: list[dict[str, Any]] = []
        # (msg_id, chunk tag) -> the generation to keep (None: none)
        final_gen: dict[tuple[str, str | None], ObjectId | None] = {}
        for op in batch:
            if op.payload is None:
                requests.append(DeleteMany({"msg_id": {"$in": list(op.msg_ids)}}))
                for msg_id in op.msg_ids:
                    for *_, tag in _BUFFER_KINDS:
                        final_gen[msg_id, tag] = None
                continue
            document, seq, *values = op.payload
            msg_id = op.msg_ids[0]
            requests.append(
                UpdateOne(
                    {"msg_id": msg_id},
                    {"$set": document, "$setOnInsert": {"_id": seq}},
                    upsert=True,
                )
            )
            for (field, pointer_key, inline_limit, tag), buffers in zip(
                _BUFFER_KINDS, values, strict=True
            ):
                if buffers is _UNCHANGED:
                    continue
                if buffers is None or sum(len(b) for b in buffers) <= inline_limit:
                    inline = None if buffers is None else [bytes(b) for b in buffers]
                    change = {"$set": {field: inline}, "$unset": {pointer_key: ""}}
                    final_gen[msg_id, tag] = None
                else:
                    gen = ObjectId()
                    chunks += _chunk_documents(gen, msg_id, buffers, tag)
                    pointer = {"gen": gen, "lengths": [len(b) for b in buffers]}
                    change = {"$set": {pointer_key: pointer}, "$unset": {field: ""}}
                    final_gen[msg_id, tag] = gen
                requests.append(UpdateOne({"msg_id": msg_id}, change))
        if chunks:
            self._chunks.insert_many(chunks, ordered=True)
        self._tasks.bulk_write(requests, ordered=True)
        stale = [_stale_chunks(m, tag, g) for (m, tag), g in final_gen.items()]
        for start in range(0, len(stale), 1000):
            self._chunks.delete_many({"$or": stale[start : start + 1000]})
        if self._purged_bytes >= COMPACT_AFTER and any(op.payload is None for op in batch):
            self._purged_bytes = 0
            database = self._tasks.database
            for collection in (self._chunks, self._tasks):
                database.command("compact", collection.name)

    def _after_purge(self, purge: Purge) -> None:
        # WiredTiger reuses deleted space but keeps the files; compacting after many bytes
        # were purged gives them back (done by the writer thread, after the deletes)
        self._purged_bytes += purge.freed

    def _stored_sizes(self) -> list[tuple[str, int, Any, Any]]:
        """(msg_id, size, status, received) of every record, measured by the server."""
        pipeline: list[dict[str, Any]] = [
            {"$sort": {"_id": 1}},
            {
                "$project": {
                    "msg_id": 1,
                    "status": 1,
                    "received": 1,
                    "size": {"$bsonSize": "$$ROOT"},
                    "chunks": {
                        "$add": [
                            {"$sum": {"$ifNull": ["$_buffers.lengths", []]}},
                            {"$sum": {"$ifNull": ["$_request_buffers.lengths", []]}},
                        ]
                    },
                }
            },
        ]
        try:
            return [
                (d["msg_id"], int(d["size"]) + int(d["chunks"]), d.get("status"), d.get("received"))
                for d in self._tasks.aggregate(pipeline, allowDiskUse=True)
            ]
        except PyMongoError as exc:
            raise StoreError(f"reading the result store {self.name} failed: {exc}") from exc

    # ------------------------------------------------------------ reads

    def get_records(self, msg_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        self.flush()
        ids = check_msg_ids(msg_ids)
        documents: list[dict[str, Any]] = []
        try:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                documents += self._tasks.find({"msg_id": {"$in": chunk}})
        except PyMongoError as exc:
            raise StoreError(f"reading the result store {self.name} failed: {exc}") from exc
        documents.sort(key=lambda document: document["_id"])
        records = self._finish(documents, [], None, load_buffers=True)
        return {record["msg_id"]: record for record in records}

    def find_records(
        self, query: dict[str, Any], keys: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        conditions = parse_query(query)
        fields = check_keys(keys)
        atoms, residue = split_query(conditions, SCALAR_FIELD_CATEGORIES)
        projection = None
        if fields is not None:
            needed = {*fields, *(c.field for c in residue)}
            projection = dict.fromkeys(needed, 1)
            for field, pointer_key, _, _ in _BUFFER_KINDS:
                if field in needed:
                    projection[pointer_key] = 1
        self.flush()
        try:
            documents = list(
                self._tasks.find(
                    mongo_filter(atoms), projection, sort=[("_id", 1)], allow_disk_use=True
                )
            )
        except PyMongoError as exc:
            raise StoreError(f"reading the result store {self.name} failed: {exc}") from exc
        load = fields is None or BUFFERS_FIELD in fields or REQUEST_BUFFERS_FIELD in fields
        return self._finish(documents, residue, fields, load_buffers=load)

    def _finish(
        self,
        documents: list[dict[str, Any]],
        residue: list[Condition],
        fields: tuple[str, ...] | None,
        *,
        load_buffers: bool,
    ) -> list[dict[str, Any]]:
        """Records from documents: bookkeeping removed, residue applied, chunks joined."""
        early = any(c.field in (BUFFERS_FIELD, REQUEST_BUFFERS_FIELD) for c in residue)
        if early:
            self._load_chunks(documents)
        records = []
        for document in documents:
            document.pop("_id", None)
            if residue and not matches(document, residue):
                continue
            records.append(document)
        if load_buffers and not early:
            self._load_chunks(records)
        for record in records:
            record.pop("_buffers", None)
            record.pop("_request_buffers", None)
        return [project(record, fields) for record in records]

    def _load_chunks(self, documents: list[dict[str, Any]]) -> None:
        """Replace chunk pointers by the buffers, fetched in one query."""
        pointers = {
            d[pointer_key]["gen"]: (d, field, pointer_key)
            for d in documents
            for field, pointer_key, _, _ in _BUFFER_KINDS
            if pointer_key in d
        }
        if not pointers:
            return
        parts: dict[ObjectId, dict[int, list[bytes]]] = {gen: {} for gen in pointers}
        try:
            cursor = self._chunks.find(
                {"gen": {"$in": list(pointers)}}, sort=[("gen", 1), ("index", 1), ("part", 1)]
            )
            for chunk in cursor:
                parts[chunk["gen"]].setdefault(chunk["index"], []).append(chunk["data"])
        except PyMongoError as exc:
            raise StoreError(f"reading result buffers from {self.name} failed: {exc}") from exc
        for gen, (document, field, pointer_key) in pointers.items():
            pointer = document.pop(pointer_key)
            pieces = parts[gen]
            buffers = []
            for index, length in enumerate(pointer["lengths"]):
                data = pieces.get(index, [b""])
                buffers.append(data[0] if len(data) == 1 else b"".join(data))
                if len(buffers[-1]) != length:
                    raise StoreError(
                        f"{field} of {document.get('msg_id')!r} in {self.name} are incomplete"
                    )
            document[field] = buffers

    def get_history(self) -> list[str]:
        self.flush()
        try:
            cursor = self._tasks.find({}, {"msg_id": 1, "submitted": 1}, sort=[("_id", 1)])
            return in_submission_order((doc["msg_id"], doc.get("submitted")) for doc in cursor)
        except PyMongoError as exc:
            raise StoreError(f"reading the result store {self.name} failed: {exc}") from exc

    def holding_writes(self) -> AbstractContextManager[None]:
        return self._writer.holding()

    def write_mark(self) -> int:
        return self._writer.mark()

    def written(self, mark: int) -> bool:
        return self._writer.applied(mark)

    def flush(self) -> None:
        if self._closed:
            raise StoreError(f"the MongoDB result store {self.name} is closed")
        self._writer.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            if self._client is not None:
                self._client.close()
