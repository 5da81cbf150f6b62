"""The page: the prompt form, the demo notice, and htmx served locally or from a CDN."""

import html
import json
import re

import pytest

import server
from server import VENDOR_SCRIPTS


async def test_page_has_the_htmx_form_and_an_empty_container(start_app):
    client = await start_app()
    response = await client.get("/")
    page = await response.text()

    assert response.status == 200
    assert (
        '<form hx-post="/process_prompt" hx-target="#response-container" hx-swap="beforeend"'
        in page
    )
    assert '<textarea id="prompt" name="prompt"' in page
    assert '<div id="response-container" class="thread">\n    </div>' in page
    assert "offline demo provider" in page
    assert "OPENAI_BASE_URL" in page  # how to point it at a real model


#: Every status the app refuses a prompt with (server.py's Refusal).
REFUSAL_STATUSES = [400, 403, 404, 408, 409, 413, 415, 422, 429, 503]


async def test_page_lets_htmx_swap_our_refusals(start_app):
    page = await (await (await start_app()).get("/")).text()
    config = json.loads(
        html.unescape(re.search(r'name="htmx-config" content=\'([^\']*)\'', page)[1])
    )
    assert config["allowScriptTags"] is False
    swapped = [rule for rule in config["responseHandling"] if rule.get("error") is False]
    for status in REFUSAL_STATUSES:  # htmx 2 would drop these and only log the status
        assert any(re.fullmatch(rule["code"], str(status)) and rule["swap"] for rule in swapped)


async def test_page_guards_against_the_browsers_own_error_event(start_app):
    client = await start_app()
    page = await (await client.get("/")).text()
    script = await (await client.get("/static/app.js")).text()

    assert '<script src="/static/app.js"></script>' in page
    assert "htmx:sseBeforeMessage" in script and "preventDefault" in script
    css = await (await client.get("/static/style.css")).text()
    assert "white-space: pre-wrap" in css


def installed() -> bool:
    return all(script.local_file.is_file() for script in VENDOR_SCRIPTS)


@pytest.mark.skipif(not installed(), reason="htmx is not installed here: run `npm ci`")
async def test_installed_htmx_is_served_by_the_app_with_integrity(start_app):
    client = await start_app()
    page = await (await client.get("/")).text()
    for script in VENDOR_SCRIPTS:
        assert f'src="/vendor/{script.filename}" integrity="{script.integrity}"' in page
        response = await client.get(f"/vendor/{script.filename}")
        assert response.status == 200
        assert await response.read() == script.local_file.read_bytes()


async def test_without_npm_the_page_uses_the_pinned_cdn(start_app, monkeypatch, tmp_path):
    monkeypatch.setattr(server, "NODE_MODULES", tmp_path)
    client = await start_app()
    response = await client.get("/")
    page = await response.text()
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self' https://cdn.jsdelivr.net;" in csp  # and no other host
    for script in VENDOR_SCRIPTS:
        assert f'src="{script.cdn_url}" integrity="{script.integrity}"' in page
        assert (await client.get(f"/vendor/{script.filename}")).status == 404
    assert "@2.0.11/" in VENDOR_SCRIPTS[0].cdn_url and "@2.2.4/" in VENDOR_SCRIPTS[1].cdn_url


async def test_a_different_local_version_is_not_used(start_app, monkeypatch, tmp_path):
    for script in VENDOR_SCRIPTS:
        target = tmp_path / script.package_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("/* htmx 4 */")
    monkeypatch.setattr(server, "NODE_MODULES", tmp_path)
    page = await (await (await start_app()).get("/")).text()
    assert "/vendor/" not in page


async def test_unknown_vendor_file_is_not_found(start_app):
    client = await start_app()
    assert (await client.get("/vendor/../server.py")).status == 404
    assert (await client.get("/vendor/other.js")).status == 404
