"""History rows and task pages from stored records."""

from __future__ import annotations

from corral.dashboard.details import MAX_TEXT, duration, result_summary, row, task_page
from corral.protocol.serialize import serialize_object


def record(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "msg_id": "m1",
        "status": "ok",
        "queue": "task",
        "engine_id": 3,
        "engine_uuid": "u3",
        "client_uuid": "c1",
        "submitted": "2026-01-01T00:00:00+00:00",
        "started": "2026-01-01T00:00:01+00:00",
        "completed": "2026-01-01T00:00:03.500000+00:00",
        "header": {"msg_type": "apply_request"},
        "metadata": {"retries": 2, "after": []},
        "result_metadata": {"call": "f(1)"},
        "stdout": "hello\n",
    }
    base.update(extra)
    return base


def test_a_row_has_the_duration_and_the_call() -> None:
    line = row(record())
    assert line["duration"] == 2.5 and line["call"] == "f(1)" and line["engine_id"] == 3
    assert duration(None, "x") is None and duration("bad", "2026-01-01") is None


def test_a_task_page_shows_the_result_and_the_flags() -> None:
    buffers = [bytes(b) for b in serialize_object({"answer": 42})]
    page = task_page(record(), buffers)
    assert page["result"] == "{'answer': 42}"
    assert page["flags"] == {"retries": 2}
    assert page["stdout"] == "hello\n" and page["error"] is None


def test_an_error_page_shows_the_traceback() -> None:
    failed = record(
        status="error",
        result_content={"ename": "ValueError", "evalue": "bad", "traceback": ["line 1", "x"]},
    )
    page = task_page(failed, [])
    assert page["error"] == {"ename": "ValueError", "evalue": "bad", "traceback": "line 1\nx"}
    assert page["result"] is None


def test_results_that_cannot_be_read_here_are_described() -> None:
    text = result_summary("ok", [b"not a pickle"])
    assert text is not None and text.startswith("<12 bytes") and "not readable here" in text


def test_long_output_is_clipped() -> None:
    page = task_page(record(stdout="x" * (MAX_TEXT + 5)), [])
    assert page["stdout"].endswith("(5 more characters)")
