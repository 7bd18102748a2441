"""Debian's chromium, driven by Playwright for Python: no browser download (``playwright install`` is
never run), the system binary is launched through ``executable_path``.

``chromium()`` yields a browser context with a fresh user-data directory; the flags keep chromium
from reaching out at start-up (component updates, sync, background networking), which this
machine refuses, and ``--no-sandbox`` lets it run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
FLAGS = ("--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--metrics-recording-only", "--no-default-browser-check", "--disable-dev-shm-usage")


def find_chromium() -> Optional[Path]:
    """The system chromium ($EDGEPROBE_CHROMIUM, else Debian's paths, else PATH); None if absent."""
    env = os.environ.get("EDGEPROBE_CHROMIUM")
    if env:
        return Path(env) if Path(env).is_file() else None
    for c in CANDIDATES:
        if Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


def missing_reason() -> Optional[str]:
    """Why a Chromium test cannot run here (None if it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -c constraints.txt playwright)"
    if find_chromium() is None:
        return "no chromium binary (apt-get install chromium)"
    return None


@contextlib.contextmanager
def chromium(*, width: int = 1400, height: int = 1000) -> Iterator["object"]:
    """A headless Playwright BrowserContext on the system chromium, in a fresh user-data dir."""
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise RuntimeError(missing_reason() or "no chromium")
    profile = tempfile.mkdtemp(prefix="edgeprobe-chromium-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=str(exe), headless=True, args=[*FLAGS],
                viewport={"width": width, "height": height}, offline=False)
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
