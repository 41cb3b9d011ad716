"""ipyparallel's data publication on a real cluster: ``publish_data`` in a task updates its
AsyncResult's ``data`` while it runs and once it is done (``wait_for_output``)."""

from __future__ import annotations

from pathlib import Path

from tests.polling import file_appears, until

PUBLISH_FIVE = (
    "from corral.datapub import publish_data\nfor i in range(5):\n    publish_data(dict(i=i))"
)


def test_execute_publishes_to_ar_data(rc) -> None:  # type: ignore[no-untyped-def]
    single = rc[rc.ids[-1]].execute(PUBLISH_FIVE, block=False)
    assert isinstance(single.data, dict)
    single.get(30)
    assert single.wait_for_output(30)
    assert single.data == {"i": 4}
    everywhere = rc[:].execute(PUBLISH_FIVE, block=False)
    everywhere.get(30)
    assert everywhere.wait_for_output(30)
    assert everywhere.data == [{"i": 4}] * len(rc.ids)


def test_data_arrives_while_the_task_runs(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    go = tmp_path / "go"

    def steps(go: str) -> str:
        from corral.datapub import publish_data

        publish_data({"step": 0})
        file_appears(go)  # the test saw step 0
        publish_data({"step": 1, "done": True})
        return "finished"

    ar = rc.load_balanced_view().apply_async(steps, str(go))
    until(lambda: ar.data.get("step") == 0, 30, "the first published step")
    assert not ar.done()
    go.touch()
    assert ar.get(30) == "finished"
    assert ar.wait_for_output(30)
    assert ar.data == {"step": 1, "done": True}
