"""Headless Chromium for the dashboard's browser tests, screenshots and benchmark.

Chromium and its driver come from Debian's packages (``chromium``, ``chromium-driver``),
installed on first use through tools/apt-install.sh, like the other test-time servers. The
browser runs headless with every background service off: on a closed network its calls home
would be refused, and they have no place in a test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def ensure_chromium() -> None:
    """Install Chromium and its driver if this machine lacks them (needs root, as in CI)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    script = REPO_ROOT / "tools" / "apt-install.sh"
    subprocess.run([str(script), "chromium", "chromium-driver"], check=True)


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A Selenium driver of a fresh headless Chromium (own profile), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ensure_chromium()
    profile = tempfile.mkdtemp(prefix="corral-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
