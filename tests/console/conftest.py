"""Fixtures of the console's browser tests: Debian's chromium driven by Playwright (never a
downloaded browser), a fresh profile per test, CSP violations and page errors collected, and
axe-core injected for accessibility scans."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_helpers import Console
from playwright.sync_api import Browser, Playwright, sync_playwright

from tollgate_dev.servers.programs import GatewayProcess

REPO = Path(__file__).resolve().parents[2]
CONSOLE = REPO / "gateway" / "console"
AXE = CONSOLE / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("TOLLGATE_TEST_ARTIFACTS", REPO / ".state" / "test-artifacts"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Records CSP violations, so a test can prove the console runs under its own policy.
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sample || ''));
});
"""


@pytest.fixture(scope="session")
def console_built() -> Path:
    """The built console: hack/build-console.sh (cached by a hash of the sources, so this is
    quick when nothing changed) also installs axe-core with the console's dev dependencies."""
    build = subprocess.run(
        [str(REPO / "hack" / "build-console.sh"), "--with-deps"],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"the console does not build:\n{build.stderr[-3000:]}", pytrace=False)
    if not AXE.is_file():
        pytest.fail(f"axe-core is missing ({AXE})", pytrace=False)
    return CONSOLE / "out"


# Module scope, not session: Playwright's sync API runs an event loop of its own in this
# thread while it is open, which would break every asyncio test that runs after these.
@pytest.fixture(scope="module")
def playwright_session() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_session: Playwright, console_built: Path) -> Iterator[Browser]:
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).is_file():
        pytest.fail("Debian's chromium is missing: hack/ensure-debs.sh chromium", pytrace=False)
    # Each context below is a fresh, empty profile (Playwright's own temporary user-data-dir).
    browser = playwright_session.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = ARTIFACTS / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def console(browser: Browser, gateway: GatewayProcess, artifacts: Path) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1366, "height": 800}, accept_downloads=True)
    context.add_init_script(WATCH_CSP)
    context.add_init_script(path=str(AXE))
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    tab = Console(page, gateway.url, artifacts)
    yield tab
    context.close()
