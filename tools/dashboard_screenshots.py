"""Screenshots of the dashboard's main views for docs/images/ (run by hand, not by the tests).

    .venv/bin/python -m tools.dashboard_screenshots

Starts a cluster of 8 engines with its dashboard, runs a mixed workload (tasks of varied
length, some failing), and saves the cluster view, the history and a failed task's page.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from corral.cluster.cluster import Cluster
from tools.chromium import REPO_ROOT, chromium

IMAGES = REPO_ROOT / "docs" / "images"


def work(x: int) -> int:
    import random
    import time

    if x % 2:
        time.sleep(random.uniform(0.05, 0.6))
    else:
        deadline = time.monotonic() + random.uniform(0.05, 0.3)
        while time.monotonic() < deadline:  # keep a CPU busy for a while
            pass
    if x % 23 == 0:
        raise ValueError(f"input {x} is not allowed")
    print(f"processed {x}")
    return x * x


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as base:
        cluster = Cluster(n=8, cluster_dir=base, dashboard=True, heartbeat_period=1.0)
        rc = cluster.start()
        try:
            view = rc.load_balanced_view()
            stop = threading.Event()

            def submit() -> None:
                batch = 0
                while not stop.is_set():
                    view.map_async(work, range(batch * 40, batch * 40 + 40), chunksize=1)
                    batch += 1
                    stop.wait(1.5)

            feeder = threading.Thread(target=submit, daemon=True)
            feeder.start()
            url = str(cluster.dashboard_url)
            base_url = url.split("/?", 1)[0]
            with chromium(1440, 1280) as browser:
                browser.get(url)
                time.sleep(40)  # let the charts and the timeline fill
                browser.save_screenshot(str(IMAGES / "dashboard-cluster.png"))
                stop.set()
                feeder.join()
                rc.wait(timeout=120)
                browser.get(base_url + "/#/history")
                time.sleep(2)
                browser.save_screenshot(str(IMAGES / "dashboard-history.png"))
                browser.get(base_url + "/#/history?status=error")
                time.sleep(2)
                browser.find_element("css selector", "#history tbody tr[data-msg-id]").click()
                time.sleep(2)
                browser.save_screenshot(str(IMAGES / "dashboard-task.png"))
        finally:
            cluster.stop()
    for name in ("dashboard-cluster", "dashboard-history", "dashboard-task"):
        print(Path(IMAGES / f"{name}.png"))


if __name__ == "__main__":
    main()
