"""The dashboard in a real headless browser (issue #13): Debian's Chromium driven by
Playwright (``executable_path=/usr/bin/chromium``; Playwright's own browser downloads are
not used). Two real agents; the page must show a deploy, held by both agents, within 2 s
and without a reload, keep updating (a second version), show a stopped agent as lost,
load nothing from outside the agent, and fit a phone's width.

The screenshot is a test artefact: ``build/test-artifacts/dashboard.png``
(``NEBULA_EDGE_ARTIFACTS`` to put it elsewhere); docs/dashboard.png is a copy of it.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from agents import ROOT, SAMPLES, AgentPool, connected, p2p_addr, wait_for

CHROMIUM = os.environ.get("NEBULA_EDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("NEBULA_EDGE_ARTIFACTS", ROOT / "build" / "test-artifacts"))
SHOWN_MS = 2000
"""The issue's bound: a deploy is on the page, held by both agents, within 2 s."""
FAST = ("-fast", "-mdns=false")
DOUBLE = (SAMPLES / "double" / "double.wasm").read_bytes()
TRIPLE = bytes(wasmtime.wat2wasm('(module (func (export "double") (param i32) (result i32)'
                                 " local.get 0 i32.const 3 i32.mul))"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install -e '.[dev]' (see .ci/run)")
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium " \
                                    "(.ci/run does)"
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1100, "height": 760})
        try:
            yield ctx
        finally:
            ctx.close()


def test_dashboard_live_in_a_browser(agent_factory: AgentPool, browser: Any) -> None:
    t_start = time.monotonic()
    a = agent_factory(*FAST, mesh=True)
    b = agent_factory(*FAST, "-peer", p2p_addr(a), mesh=True)
    wait_for(lambda: connected(a, b), 15, msg="A and B to list each other")
    host = urllib.parse.urlsplit(a.url).netloc
    page = browser.new_page()
    outside: list[str] = []

    def only_the_agent(route: Any) -> None:
        if urllib.parse.urlsplit(route.request.url).netloc == host:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_agent)
    errors: list[str] = []  # script errors, CSP violations
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(a.url + "/ui")
    page.wait_for_selector('#live[data-state="live"]', timeout=10_000)
    # (selectors, not wait_for_function: the page's CSP forbids the eval that needs)
    page.wait_for_selector("#agents tr[data-status=healthy]:nth-of-type(2)", timeout=10_000)
    page.evaluate("window.__sameDocument = 'yes'")  # gone if the page reloads

    # A deploy through the API (on B): the page of A shows it held by both within 2 s.
    status, body, _ = b.upload("dash", DOUBLE)
    assert status == 201, body
    t0 = time.monotonic()
    page.wait_for_selector('#modules tr[data-module="dash"][data-version="1"]'
                           '[data-held="2"][data-agents="2"]', timeout=SHOWN_MS)
    shown_s = time.monotonic() - t0

    # It keeps updating: a second version, then a call's numbers, still without a reload.
    status, body, _ = a.upload("dash", TRIPLE)
    assert status == 201, body
    page.wait_for_selector('#modules tr[data-module="dash"][data-version="2"]'
                           '[data-held="2"]', timeout=SHOWN_MS)
    assert a.exec("dash", 7)[1] == {"result": 21}
    page.wait_for_selector('#modules tr[data-module="dash"][data-calls="1"]', timeout=5_000)
    assert page.inner_text('#modules tr[data-module="dash"] td.num') != "-"  # calls/s
    page.wait_for_selector('#events li[data-kind="deploy"]', timeout=SHOWN_MS)
    assert page.evaluate("window.__sameDocument") == "yes", "the page reloaded"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("NEBULA_EDGE_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")

    # Phone width: nothing wider than the screen but the tables' own scroll boxes.
    page.set_viewport_size({"width": 390, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)

    # A delete made on B: the module leaves A's page, and A's events say so.
    assert b.delete("/modules/dash")[0] == 200
    page.wait_for_selector('#modules tr[data-module="dash"]', state="detached", timeout=5_000)
    page.wait_for_selector('#events li[data-kind="delete"]', timeout=5_000)

    # An agent that stops is shown as lost, live.
    b.stop()
    page.wait_for_selector('#agents tr[data-status="lost"]', timeout=20_000)
    assert outside == [], f"the page loaded from outside the agent: {outside}"
    # Only the stream's reconnect attempts to the stopped agent may complain.
    assert [e for e in errors if "/ui/events" not in e and "ERR_CONNECTION" not in e] == []
    print(f"\ndashboard: deploy shown held by 2/2 after {shown_s:.2f} s; "
          f"test {time.monotonic() - t_start:.1f} s")


def test_dashboard_state_is_json(agent_factory: AgentPool) -> None:
    """What the page shows, for scripts: /ui/state; the stream says the same."""
    a = agent_factory()
    status, body, _ = a.upload("dash-json", DOUBLE)
    assert status == 201, body
    status, st, headers = a.get("/ui/state")
    assert status == 200, st
    assert st["agents"][0]["self"] is True and st["agents"][0]["status"] == "healthy"
    [m] = [m for m in st["modules"] if m["name"] == "dash-json"]
    assert (m["version"], m["held_by"], m["agents"]) == (1, 1, 1)
    assert [e["kind"] for e in st["events"]][:1] == ["deploy"]
    status, _, headers = a.get("/ui")
    assert status == 200 and "text/html" in headers["Content-Type"]
    status, err, _ = a.get("/ui/static/../../app.py")
    assert status == 404, err
    status, err, _ = a.get("/ui/state?events=x")
    assert status == 400 and err["error"]["code"] == "bad_request", err


def test_dashboard_changes_need_the_token(agent_factory: AgentPool, browser: Any,
                                          tmp_path: Path) -> None:
    """With -token the page offers deploy, roll back and delete; the API checks the token
    typed into the page. Without -token the page has no such controls (read-only)."""
    a = agent_factory("-token", "s3cret")
    wasm = tmp_path / "triple.wasm"
    wasm.write_bytes(TRIPLE)
    page = browser.new_page()
    page.on("dialog", lambda d: d.accept())  # the delete confirmation
    page.goto(a.url + "/ui")
    page.wait_for_selector("#actions:not([hidden])", timeout=10_000)
    page.fill("#deploy-name", "byhand")
    page.set_input_files("#deploy-file", str(wasm))
    page.fill("#token", "wrong")
    page.click("#deploy")
    page.wait_for_selector("#action-msg.bad:has-text('unauthorized')", timeout=5_000)
    page.fill("#token", "s3cret")
    page.click("#deploy")
    page.wait_for_selector('#modules tr[data-module="byhand"][data-version="1"]',
                           timeout=SHOWN_MS)
    page.click("#deploy")  # the same bytes again: a new version
    page.wait_for_selector('#modules tr[data-module="byhand"][data-version="2"]',
                           timeout=SHOWN_MS)
    page.click('#modules button[data-action="rollback"][data-name="byhand"]')
    page.wait_for_selector('#modules tr[data-module="byhand"][data-version="3"]',
                           timeout=SHOWN_MS)
    assert a.exec("byhand", 5)[1] == {"result": 15}
    page.click('#modules button[data-action="delete"][data-name="byhand"]')
    page.wait_for_selector('#modules tr[data-module="byhand"]', state="detached",
                           timeout=SHOWN_MS)
    assert "byhand" not in a.module_names()

    b = agent_factory()  # no token: read-only
    page.goto(b.url + "/ui")
    page.wait_for_selector('#live[data-state="live"]', timeout=10_000)
    assert page.is_hidden("#actions")
    assert page.locator("#modules button").count() == 0
