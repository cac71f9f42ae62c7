"""The web console at ``/`` and the API reference at ``/docs``, in a real browser.

What this proves:
- Against a real gateway, broker, simulated radio and bridge, a demo user signs in with the
  **User** select, starts a conversation with ``!a1b2c3d4`` in the **Node** field, sends from
  the **Message** box with the keyboard, and sees the status reach ``delivered`` and the node's
  reply appear without reloading (the websocket stream).
- The byte counter counts UTF-8 bytes (``é`` is two) against the limit the gateway announces,
  and a refused send (the free plan) shows the API's ``detail`` next to the box.
- At 360 px the page has no horizontal scroll.
- ``/docs`` renders the OpenAPI document with the package's own reference page.
- No request, websocket included, goes to any host but the gateway's.

The browser is the system's chromium (Debian's package), driven by Playwright for Python; the
tests install nothing and skip, saying why, only when no chromium executable exists. Playwright's
sync API runs in a worker thread so that it does not meet pytest-trio's event loop.
Screenshots go to ``$KOSMO_CONSOLE_SCREENSHOTS`` when it is set (``docs/`` for the README).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import trio
from playwright.sync_api import Page, expect, sync_playwright

from kosmo.config import Settings
from tests.conftest import FREE, GUARDIAN, WANDERER, Gateway, db_value, start_gateway
from tests.test_access import SECRET, token
from tests.test_airtime import NORTH, Site, until

NODE = "!a1b2c3d4"
TEXT = "Grüße vom Gipfel"  # 16 characters, 18 bytes in UTF-8
CHROMIUM = next((path for path in ("/usr/bin/chromium", shutil.which("chromium"),
                                   shutil.which("chromium-browser")) if path
                 and os.access(path, os.X_OK)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium executable (apt-get install chromium)")
TIMEOUT = 30_000  # ms, for the browser's waits


@contextmanager
def browser_page(width: int = 1280, height: int = 860) -> Iterator[tuple[Page, set[str]]]:
    """A page in a fresh headless chromium, and the set of hosts it has contacted."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT)
            hosts: set[str] = set()

            def record(route: Any) -> None:
                hosts.add(urlsplit(route.request.url).hostname or "")
                route.continue_()

            page.route("**/*", record)
            page.on("websocket", lambda ws: hosts.add(urlsplit(ws.url).hostname or ""))
            yield page, hosts
        finally:
            browser.close()


def shoot(page: Page, name: str) -> None:
    folder = os.environ.get("KOSMO_CONSOLE_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def sign_in(page: Page, url: str, user: Any) -> None:
    page.goto(f"{url}/")
    page.get_by_label("User", exact=True).select_option(str(user))
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#account")).to_be_visible()


def start_conversation(page: Page, node: str) -> None:
    page.get_by_label("Node").fill(node)
    page.get_by_label("Node").press("Enter")  # the form submits as the button would
    expect(page.get_by_role("heading", name=f"Conversation with {node}")).to_be_visible()


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


async def in_browser(fn: Callable[..., set[str]], *args: Any) -> set[str]:
    return await trio.to_thread.run_sync(fn, *args)


def drive_send(url: str) -> set[str]:
    with browser_page() as (page, hosts):
        sign_in(page, url, WANDERER)
        expect(page.locator("#plan")).to_contain_text("wanderer")
        expect(page.get_by_label("Token or API key")).to_be_hidden()  # header mode
        expect(page.locator("#quota-text")).to_contain_text("0 of 50 used")
        start_conversation(page, NODE)
        expect(page.get_by_role("button", name="New conversation")).to_be_visible()
        box = page.get_by_label("Message")
        expect(box).to_be_focused()
        box.press_sequentially(TEXT)
        expect(page.locator("#counter")).to_have_text("18 / 200 bytes")
        box.press("Enter")  # sends; Shift+Enter would be a newline
        outbound = page.locator(".bubble.outbound", has_text=TEXT)
        expect(outbound).to_have_count(1)
        expect(page.locator("#quota-text")).to_contain_text("1 of 50 used")
        expect(page.locator("#counter")).to_have_text("0 / 200 bytes")
        expect(outbound.locator(".status")).to_have_text("delivered")
        expect(page.locator(".bubble.inbound", has_text=f"ack: {TEXT}")).to_have_count(1)
        conversation = page.locator("#conversations li")
        expect(conversation).to_have_count(1)
        expect(conversation).to_contain_text(NODE)
        assert no_horizontal_scroll(page)
        shoot(page, "console-desktop.png")

        page.set_viewport_size({"width": 360, "height": 760})
        expect(page.locator(".bubble.inbound")).to_be_visible()
        assert no_horizontal_scroll(page)
        assert page.get_by_role("button", name="Send").bounding_box()["width"] > 0  # type: ignore[index]
        shoot(page, "console-phone.png")
    return hosts


async def test_send_from_the_console_and_see_it_delivered_and_answered_live(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str,
        gateway: Gateway, sql: psycopg.Connection[Any]) -> None:
    site = Site("north", NORTH, [NODE])
    await site.start(nursery, tmp_path, mqtt_url, topic_root)
    await until(lambda: db_value(sql, "SELECT count(*) FROM coverage") == 1)

    hosts = await in_browser(drive_send, gateway.url)

    assert hosts == {"127.0.0.1"}
    assert db_value(sql, "SELECT status FROM messages WHERE text = %s", TEXT) == "delivered"
    await site.stop()


def drive_refused(url: str) -> set[str]:
    with browser_page(360, 760) as (page, hosts):
        sign_in(page, url, FREE)
        expect(page.locator("#plan")).to_contain_text("can receive replies but not send")
        start_conversation(page, NODE)
        box = page.get_by_label("Message")
        box.fill("é" * 100 + "x")
        expect(page.locator("#counter")).to_have_text("201 / 200 bytes")
        expect(box).to_have_attribute("aria-invalid", "true")
        box.fill("hello")
        expect(page.locator("#counter")).to_have_text("5 / 200 bytes")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("alert").filter(has_text="the plan can receive")).to_have_text(
            "the plan can receive replies but not send messages")
        expect(page.locator(".bubble")).to_have_count(0)
        assert box.input_value() == "hello"  # kept, to try again
        assert no_horizontal_scroll(page)
    return hosts


async def test_a_refused_send_shows_the_api_detail_and_the_counter_counts_bytes(
        gateway: Gateway, sql: psycopg.Connection[Any]) -> None:
    hosts = await in_browser(drive_refused, gateway.url)
    assert hosts == {"127.0.0.1"}
    assert db_value(sql, "SELECT count(*) FROM messages") == 0


def drive_jwt(url: str, credential: str) -> set[str]:
    with browser_page() as (page, hosts):
        page.goto(f"{url}/")
        expect(page.get_by_label("User", exact=True)).to_be_hidden()
        page.get_by_label("Token or API key").fill("not-a-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#signin-problem")).to_have_text("the token is not valid")
        page.get_by_label("Token or API key").fill(credential)
        page.get_by_label("Token or API key").press("Enter")
        expect(page.locator("#plan")).to_contain_text("guardian; may message !a1b2c3d4")
        expect(page.locator("#quota-text")).to_contain_text("0 of 500 used")
        expect(page.locator("#stream-state")).to_have_text("live")  # the stream took ?token=
        start_conversation(page, "!0badc0de")
        page.get_by_label("Message").fill("hi")
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#problem")).to_have_text("this node is not on the plan's whitelist")
    return hosts


async def test_jwt_mode_signs_in_with_a_token(nursery: trio.Nursery, settings: Settings) -> None:
    jwt_settings = settings.replace(auth_mode="jwt", jwt_secret=SECRET)
    async with start_gateway(nursery, jwt_settings) as gateway:
        hosts = await in_browser(drive_jwt, gateway.url, token(GUARDIAN, exp=2**31 - 1))
    assert hosts == {"127.0.0.1"}


def drive_docs(url: str) -> set[str]:
    with browser_page() as (page, hosts):
        page.goto(f"{url}/docs")
        expect(page.get_by_role("heading", name="KosmoConnect Gateway API, version 1")
               ).to_be_visible()
        expect(page.locator(".route").first).to_be_visible()
        expect(page.locator("#post--api-v1-messages")).to_contain_text("answer 201")
        expect(page.get_by_role("link", name="DELETE /api/v1/messages/{message_id}")
               ).to_be_visible()
    return hosts


async def test_docs_render_the_openapi_document_locally(gateway: Gateway) -> None:
    assert await in_browser(drive_docs, gateway.url) == {"127.0.0.1"}


async def test_console_files_and_config(gateway: Gateway) -> None:
    config = await gateway.client.get("/api/v1/console-config")
    assert config.json() == {"auth_mode": "header", "max_text_bytes": 200}
    page = await gateway.client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = await gateway.client.get("/console/console.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    for missing in ("/console/nothing.js", "/console/..%2Fcli.py", "/console/"):
        answer = await gateway.client.get(missing)
        assert answer.status_code == 404, missing
        assert answer.headers["content-type"] == "application/problem+json"
    docs = (await gateway.client.get("/docs")).text
    assert "/console/reference.js" in docs
    assert "http" not in docs.replace("http-equiv", "")  # no other host named on the page
