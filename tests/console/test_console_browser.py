"""The web console in real headless chromium against a real gateway, Postgres, Valkey and the
Ollama stand-in: the whole path of an admin, a viewer and a key holder."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import psycopg
import pytest
from console_helpers import Console
from playwright.sync_api import expect

from tollgate_dev.plugins.services import ADMIN_EMAIL, ADMIN_PASSWORD, Admin
from tollgate_dev.servers.programs import GatewayProcess

SCREENS = ["/", "/keys/", "/models/", "/usage/", "/playground/", "/my-key/", "/users/"]


def login(console: Console, email: str, password: str) -> None:
    console.goto("/")
    console.page.wait_for_url(re.compile(r"/console/login/"))
    console.page.get_by_label("Email").fill(email)
    console.page.get_by_label("Password").fill(password)
    console.page.get_by_role("button", name="Log in").click()
    expect(console.page.get_by_test_id("whoami")).to_contain_text(email)


def overview_requests(console: Console) -> int:
    """The overview's 24-hour request count, freshly loaded."""
    console.goto("/")
    stat = console.page.get_by_test_id("stat-requests")
    expect(stat).to_be_visible()
    return int(stat.inner_text().replace(",", ""))


def until(check: Callable[[], Any], seconds: float = 20, every: float = 0.5) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def clean(console: Console) -> None:
    """No CSP violation, page error or console error happened in this tab."""
    assert console.csp_violations() == []
    assert [f for f in console.failed if " 401 " not in f and " 403 " not in f] == []
    assert [e for e in console.errors if "status of 40" not in e] == []


def test_admin_flow_from_login_to_revocation(
    console: Console, gateway: GatewayProcess, admin: Admin, chat_model: str
) -> None:
    page = console.page
    other = admin.create_key(name="someone-elses-key", app="other-team")
    login(console, ADMIN_EMAIL, ADMIN_PASSWORD)
    before = overview_requests(console)
    # An admin's session token is the only thing the console keeps in storage.
    storage = page.evaluate("[Object.keys(localStorage), Object.keys(sessionStorage)]")
    assert storage == [[], ["tollgate.session"]]

    # Create a key; its plaintext is shown once, with the base URL to use.
    name, app = f"browser-{secrets.token_hex(3)}", f"browser-app-{secrets.token_hex(3)}"
    page.get_by_role("navigation").get_by_role("link", name="Keys").click()
    page.get_by_role("button", name="Create key").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("App").fill(app)
    page.get_by_label("Owner").fill("console test")
    page.get_by_label("Monthly budget (USD)").fill("10")
    page.get_by_label("Requests per minute").fill("600")
    page.get_by_role("button", name="Create key").click()
    plaintext = page.get_by_test_id("new-key").inner_text().strip()
    assert plaintext.startswith("tg-") and len(plaintext) > 20
    expect(page.get_by_test_id("base-url")).to_have_text(f"OPENAI_BASE_URL={gateway.url}/v1")
    page.get_by_role("button", name="Copy key").click()
    assert page.evaluate("navigator.clipboard.readText()") == plaintext
    console.shot("keys-created")

    # The playground streams an answer with the key just created (kept in memory only).
    page.get_by_role("link", name="Try it in the playground").click()
    page.wait_for_url(re.compile(r"/console/playground/$"))
    expect(page.get_by_label("API key", exact=True)).to_have_value(plaintext)
    page.get_by_role("button", name="Use this key").click()
    page.get_by_label("Model", exact=True).select_option(chat_model)
    expect(page.get_by_label("Model", exact=True)).to_have_value(chat_model)
    page.get_by_label("Message").fill("Tell me something")
    page.get_by_role("button", name="Send").click()
    stats_line = page.get_by_test_id("answer-stats")
    expect(stats_line).to_contain_text("TTFT")
    assert re.search(r"TTFT \d+ ms", stats_line.inner_text())
    assert re.search(r"\d+ in / [1-9]\d* out tokens · cost \$", stats_line.inner_text())
    answer = page.locator("[data-role=assistant]").last.inner_text()
    assert len(answer.replace("Assistant:", "").strip()) > 0
    console.shot("playground")
    # Back on the keys screen the plaintext is gone, and no reload brings it back.
    page.get_by_role("navigation").get_by_role("link", name="Keys").click()
    page.wait_for_url(re.compile(r"/console/keys/$"))
    expect(page.get_by_role("cell", name=re.compile("^" + name))).to_be_visible()
    expect(page.get_by_test_id("new-key")).to_have_count(0)
    page.reload()
    expect(page.get_by_role("cell", name=re.compile("^" + name))).to_be_visible()
    assert plaintext not in page.content()
    console.shot("keys")

    # More traffic with it through the OpenAI SDK (the playground sent one streamed request).
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=plaintext, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "hello"}]
        )
    assert list(
        client.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )

    # ... shows in the overview: five more requests in the last 24 hours (the playground's and
    # the SDK's; other tests' traffic may outrank its app among the top five) ...
    assert until(lambda: overview_requests(console) >= before + 5)
    top_apps = page.get_by_role("region", name="Top apps", exact=True)
    expect(top_apps.get_by_role("row")).not_to_have_count(0)
    console.shot("overview")

    # ... and in the usage explorer, with its CSV export.
    page.get_by_role("link", name="Usage").click()
    row = page.get_by_role("row", name=re.compile(re.escape(app)))

    def app_row_shown() -> bool:
        # choosing the grouping again fetches again: the rows of a loaded machine may land
        # in the rollups after the page's first answer
        page.get_by_label("Group by").select_option("key")
        page.get_by_label("Group by").select_option("app")
        try:
            expect(row).to_be_visible(timeout=5_000)
        except AssertionError:
            return False
        return True

    assert until(app_row_shown, seconds=60, every=0.1)
    cells = row.locator("td")
    assert cells.nth(0).inner_text() == "5"  # requests
    assert cells.nth(6).inner_text() != "—"  # TTFT p50 from the streamed answer
    expect(page.get_by_test_id("usage-chart")).to_be_visible()
    console.shot("usage")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    csv_text = download.value.path().read_text()
    assert csv_text.startswith("app,label,requests")
    assert any(line.startswith(f"{app},{app},5,") for line in csv_text.splitlines())

    # My key shows that key and nothing of others.
    page.get_by_role("link", name="My key").click()
    page.wait_for_url(re.compile(r"/console/my-key/$"))
    page.get_by_label("API key", exact=True).fill(plaintext)
    page.get_by_role("button", name="Show my key").click()
    info = page.get_by_test_id("my-key-info")
    expect(info).to_contain_text(name)
    expect(page.get_by_test_id("my-models")).to_contain_text(chat_model)
    assert other["name"] not in info.inner_text() and "other-team" not in page.content()
    console.shot("my-key")

    # Edit its limits.
    page.get_by_role("navigation").get_by_role("link", name="Keys").click()
    page.get_by_role("button", name=f"Edit limits of {name}").click()
    page.get_by_label("Requests per minute").fill("900")
    page.get_by_label("Concurrent requests").fill("3")
    page.get_by_role("button", name="Save limits").click()
    row = page.get_by_test_id(re.compile("key-row-")).filter(has_text=name)
    expect(row).to_contain_text("900 rpm · 3 at once")
    key_id = (row.get_attribute("data-testid") or "").removeprefix("key-row-")
    assert admin.http.get(f"/admin/keys/{key_id}").json()["rate_limit_rpm"] == 900

    # Revoke; the API refuses the key from then on.
    page.get_by_role("button", name=f"Revoke {name}").click()
    page.get_by_role("button", name="Confirm revoke").click()
    expect(page.get_by_role("cell", name=re.compile("^" + name))).to_have_count(0)
    page.get_by_label("Show revoked").check()
    expect(page.get_by_test_id(re.compile("key-row-")).filter(has_text=name)).to_contain_text(
        "revoked"
    )

    def refused() -> bool:
        try:
            client.chat.completions.create(
                model=chat_model, messages=[{"role": "user", "content": "again"}]
            )
        except openai.AuthenticationError:
            return True
        return False

    assert until(refused, seconds=10)

    for path, shot in (("/models/", "models"), ("/users/", "users")):
        console.goto(path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        page.wait_for_load_state("networkidle")
        console.shot(shot)
    clean(console)


def test_viewer_sees_everything_and_can_change_nothing(
    console: Console, gateway: GatewayProcess, admin: Admin, migrated_dsn: str
) -> None:
    email = f"viewer-{secrets.token_hex(3)}@tollgate.test"
    password = "viewer-password-" + secrets.token_hex(4)
    created = admin.http.post(
        "/admin/users", json={"email": email, "password": password, "role": "viewer"}
    )
    assert created.status_code == 201
    key = admin.create_key(name=f"viewer-visible-{secrets.token_hex(3)}")
    managed = admin.create_key(name=f"managed-{secrets.token_hex(3)}")
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute(
            "UPDATE api_keys SET managed_by = 'operator:team-a/chatbot' WHERE id = %s",
            (managed["id"],),
        )

    login(console, email, password)
    page = console.page
    page.get_by_role("navigation").get_by_role("link", name="Keys").click()
    expect(page.get_by_role("cell", name=re.compile("^" + key["name"]))).to_be_visible()
    expect(page.get_by_role("button", name="Create key")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^Revoke"))).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^Edit"))).to_have_count(0)
    console.shot("keys-viewer")
    page.get_by_role("link", name="Users").click()
    expect(page.get_by_role("cell", name=email)).to_be_visible()
    expect(page.get_by_role("button", name="Add user")).to_have_count(0)

    token = page.evaluate("sessionStorage.getItem('tollgate.session')")
    api = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"})
    assert api.post("/admin/keys", json={"name": "nope"}).status_code == 403
    assert api.delete(f"/admin/keys/{key['id']}").status_code == 403
    clean(console)

    # An admin sees the operator-managed key read-only, with its resource's name.
    console.page.context.clear_cookies()
    page.evaluate("sessionStorage.clear()")
    login(console, ADMIN_EMAIL, ADMIN_PASSWORD)
    page.get_by_role("navigation").get_by_role("link", name="Keys").click()
    row = page.get_by_test_id(f"key-row-{managed['id']}")
    expect(row).to_contain_text("ApiKey team-a/chatbot")
    expect(row).to_contain_text("Managed by its ApiKey resource")
    expect(row.get_by_role("button")).to_have_count(0)
    expect(page.get_by_test_id(f"key-row-{key['id']}").get_by_role("button")).to_have_count(2)


def test_my_key_refuses_a_bad_key_and_needs_no_login(console: Console) -> None:
    console.goto("/my-key/")
    page = console.page
    expect(page.get_by_role("link", name="Admin log in")).to_be_visible()
    expect(page.get_by_role("link", name="Keys")).to_have_count(0)
    page.get_by_label("API key", exact=True).fill("tg-not-a-real-key")
    page.get_by_role("button", name="Show my key").click()
    expect(page.locator("main").get_by_role("alert")).to_contain_text("not valid")
    expect(page.get_by_test_id("my-key-info")).to_have_count(0)


def test_wrong_password_is_an_error_on_the_login_screen(console: Console) -> None:
    console.goto("/login/")
    console.page.get_by_label("Email").fill(ADMIN_EMAIL)
    console.page.get_by_label("Password").fill("wrong-password")
    console.page.get_by_role("button", name="Log in").click()
    expect(console.page.locator("main").get_by_role("alert")).to_contain_text(
        "Wrong email or password"
    )
    console.shot("login-error")
    assert console.page.evaluate("sessionStorage.length") == 0


@pytest.mark.parametrize("width", [1280, 1024])
def test_every_screen_passes_axe_and_the_csp(
    console: Console, admin: Admin, chat_model: str, width: int
) -> None:
    """No serious or critical axe-core violation on any screen, at laptop widths, and the
    strict CSP holds everywhere; keyboard navigation reaches the main menu."""
    admin.create_key(name="axe-key", app="axe")
    console.page.set_viewport_size({"width": width, "height": 800})
    login(console, ADMIN_EMAIL, ADMIN_PASSWORD)
    page = console.page
    problems = {}
    for path in SCREENS:
        console.goto(path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        page.wait_for_load_state("networkidle")
        found = console.axe()
        if found:
            problems[path] = found
        # Nothing wider than the window: the layout holds down to a laptop screen.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)
    assert problems == {}
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Overview"
    clean(console)
