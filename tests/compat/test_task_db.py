"""ipyparallel's task database page (docs/source/reference/db.md) run against a real cluster:
its example queries, and the TaskRecord keys it lists."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from corral.errors import QueryError
from tests.polling import until


def fail() -> None:
    raise ZeroDivisionError("division by zero")


@pytest.mark.parametrize("db", ["memory", "sqlite"])
def test_the_task_database_pages_queries(db: str, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import running_cluster

    with running_cluster(tmp_path_factory.mktemp(db), 2, db=db) as cluster:
        rc = cluster.client
        rc.wait_for_engines(2, timeout=30)
        ar = rc.load_balanced_view().apply_async(pow, 2, 10)
        shown = rc[0].execute("6 * 7", silent=False)
        failed = rc[1].apply_async(fail)
        for done in (ar, shown, failed):
            done.wait(30)
        mine = [*ar.msg_ids, *shown.msg_ids, *failed.msg_ids]
        until(lambda: not rc.result_status(mine)["pending"], 10, "the Hub's records")

        # "All jobs started in the last hour by me" (a naive local datetime, as there)
        hourago = datetime.now() - timedelta(1.0 / 24)
        recent = rc.db_query({"started": {"$gte": hourago}, "client_uuid": rc.session.session})
        assert sorted(r["msg_id"] for r in recent) == sorted(mine)
        others = rc.db_query(
            {"started": {"$lte": hourago}, "client_uuid": {"$ne": rc.session.session}}
        )
        assert others == []
        with pytest.raises(QueryError, match=r"unknown query operator '\$le'"):
            rc.db_query({"started": {"$le": hourago}})  # the page's typo for $lte

        # a full record has every key of the page's TaskRecord table but the buffers
        table = {
            "msg_id", "header", "content", "submitted", "client_uuid", "engine_uuid",
            "started", "completed", "resubmitted", "result_header", "result_content",
            "queue", "execute_input", "execute_result", "error", "stdout", "stderr", "label",
        }  # fmt: skip
        (plain,) = rc.db_query({"msg_id": ar.msg_ids[0]})
        assert table <= set(plain)
        assert plain["execute_input"] is plain["execute_result"] is plain["error"] is None
        (execute,) = rc.db_query({"msg_id": shown.msg_ids[0]})
        assert execute["execute_input"] == "6 * 7"
        assert execute["execute_result"]["data"] == {"text/plain": "42"}
        (error,) = rc.db_query({"error": {"$ne": None}}, keys="error")
        assert error["msg_id"] == failed.msg_ids[0]
        assert error["error"]["ename"] == "ZeroDivisionError"
        assert error["error"]["traceback"] and error["error"]["engine_info"]["engine_id"] == 1
