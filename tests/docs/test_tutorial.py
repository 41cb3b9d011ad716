"""The tutorial notebook (docs/examples/tutorial.ipynb) executed end to end by nbclient on a
real Jupyter kernel, which starts its own cluster; its outputs are what the tutorial promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tutorial.ipynb"


def outputs_of(notebook: Any, tag: str) -> list[dict[str, Any]]:
    cells = [c for c in notebook.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, tag
    return list(cells[0].outputs)


def text_of(outputs: list[dict[str, Any]], name: str) -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == name)


def result_of(outputs: list[dict[str, Any]]) -> str:
    results = [o["data"]["text/plain"] for o in outputs if o["output_type"] == "execute_result"]
    assert len(results) == 1, outputs
    return str(results[0])


def widget_bar(notebook: Any, outputs: list[dict[str, Any]]) -> tuple[float, float, str]:
    """The final state of the tqdm widget a cell displayed: (value, max, its text)."""
    views = [
        o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for o in outputs
        if o["output_type"] == "display_data"
        and "application/vnd.jupyter.widget-view+json" in o["data"]
    ]
    assert len(views) == 1, outputs
    state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    children = [
        state[child.removeprefix("IPY_MODEL_")]["state"]
        for child in state[views[0]]["state"]["children"]
    ]
    progress = [c for c in children if "max" in c]
    assert len(progress) == 1
    text = " ".join(str(c.get("value", "")) for c in children if "max" not in c)
    return progress[0]["value"], progress[0]["max"], text.replace("\u2007", " ")


@pytest.mark.timeout(300)
def test_tutorial_notebook_runs_end_to_end(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path / "clusters"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    every_output = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in every_output if o["output_type"] == "error"]

    start = outputs_of(notebook, "start")
    value, maximum, text = widget_bar(notebook, start)  # the Jupyter widget bar
    assert (value, maximum) == (2, 2) and re.match(r"engines: 100% +2/2 \[", text), text
    assert result_of(start) == "[0, 1]"

    stream = outputs_of(notebook, "stream")
    printed = [o for o in stream if o["output_type"] == "stream" and o["name"] == "stdout"]
    assert len(printed) > 2  # the lines came one by one, while the engines ran
    lines = text_of(stream, "stdout").splitlines()
    for engine in (0, 1):
        mine = [line for line in lines if line.startswith(f"[stdout:{engine}] step")]
        assert [line.split(" on ")[0] for line in mine] == [
            f"[stdout:{engine}] step {i}" for i in range(3)
        ]
        assert any(re.fullmatch(rf"Out\[{engine}:\d+\]: 20", line) for line in lines)

    progress = outputs_of(notebook, "progress")
    value, maximum, text = widget_bar(notebook, progress)
    assert (value, maximum) == (40, 40) and re.match(r"slow_square: 100% +40/40 \[", text), text
    assert result_of(progress) == str(sum(i * i for i in range(40)))

    assert result_of(outputs_of(notebook, "map")) == str([i * i for i in range(10)])

    display = outputs_of(notebook, "display")
    html = [o["data"]["text/html"] for o in display if o["output_type"] == "display_data"]
    assert html and "a table made on engine 0" in html[0]
    assert text_of(display, "stdout") == ""  # one engine: no [output:0] label, as ipyparallel

    rich = outputs_of(notebook, "rich-result")
    markdown = [o["data"]["text/markdown"] for o in rich if o["output_type"] == "display_data"]
    assert len(markdown) == 2 and all(m.startswith("*engine pid ") for m in markdown)
    # each prompt, then its engine's rich result right after it (a terminal would show the
    # text form on the prompt's line, as ipyparallel)
    kinds = [o["output_type"] for o in rich]
    assert kinds == ["stream", "display_data", "stream", "display_data"], kinds
    assert re.fullmatch(r"Out\[0:\d+\]: Out\[1:\d+\]: ", text_of(rich, "stdout"))

    squares = [i * i for i in range(6)]
    assert result_of(outputs_of(notebook, "executor")) == str((squares, squares, 144))
    assert result_of(outputs_of(notebook, "joblib")) == str([i * i for i in range(8)])
