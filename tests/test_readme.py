"""The README's example runs as written (on 2 engines, in a temporary cluster folder)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    script = code.group(1).replace(
        "corral.Cluster(n=4)", f"corral.Cluster(n=2, cluster_dir={str(tmp_path)!r})"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[15, 15]"
    assert lines[1] == "4950"
    assert lines[2].startswith("1024 ") and lines[2].endswith("RUNS ONCE THE FIRST TASK IS DONE")
    assert lines[3] == str([x**2 for x in range(10)])


def test_readme_links_stay_in_the_repository() -> None:
    """Every link of the README is a file of this repository (nothing a newcomer cannot
    open from a clone), and the architecture page is among them."""
    root = README.parent
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    assert "docs/architecture.md" in links
    for link in links:
        target = (root / link.split("#")[0]).resolve()
        assert "://" not in link and not link.startswith("/"), link
        assert target.is_relative_to(root) and target.exists(), link
