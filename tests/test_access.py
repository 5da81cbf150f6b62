"""Optional password, no cross-site POSTs, and security headers the page satisfies."""

import base64

import pytest

from tests.conftest import post_prompt, read_stream
from tests.snippet import uid_from_snippet


def basic(password: str, user: str = "anyone") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("POST", "/process_prompt"), ("GET", "/response-stream?uid=x"),
     ("GET", "/static/app.js")],
)  # fmt: skip
async def test_password_protects_page_post_and_stream(start_app, method, path):
    client = await start_app(password="open sesame")
    for headers in ({}, basic("wrong"), {"Authorization": "Basic !!!"}, {"Authorization": "x"}):
        response = await client.request(method, path, headers=headers, data={"prompt": "hi"})
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")


async def test_right_password_lets_everything_through(start_app):
    client = await start_app(password="open sesame")
    auth = basic("open sesame")
    assert (await client.get("/", headers=auth)).status == 200
    response = await client.post("/process_prompt", data={"prompt": "hi"}, headers=auth)
    uid = uid_from_snippet(await response.text())
    stream = await client.get("/response-stream", params={"uid": uid}, headers=auth)
    assert "event: final_answer" in await stream.text()


async def test_health_check_needs_no_password(start_app):
    client = await start_app(password="open sesame")
    assert (await client.get("/healthz")).status == 200


async def test_no_password_means_open(start_app):
    client = await start_app()
    assert (await client.get("/")).status == 200


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
     {"Sec-Fetch-Site": "same-site"}],
    ids=["foreign-origin", "sec-fetch-cross-site", "sec-fetch-same-site"],
)  # fmt: skip
async def test_post_from_another_site_is_refused(start_app, headers):
    client = await start_app()
    response = await client.post("/process_prompt", data={"prompt": "hi"}, headers=headers)
    assert response.status == 403
    assert "can only be sent from this app" in await response.text()


async def test_post_through_a_tls_proxy_is_accepted_and_other_hosts_are_not(start_app):
    """Behind nginx with TLS the browser says https and this server sees http."""
    client = await start_app(allowed_hosts=("chat.example.org",))
    proxied = {"Host": "chat.example.org", "X-Forwarded-Proto": "https"}
    ours = {**proxied, "Origin": "https://chat.example.org"}
    theirs = {**proxied, "Origin": "https://evil.example"}
    same_origin = {**theirs, "Sec-Fetch-Site": "same-origin"}  # the browser's word wins
    typed = {"Sec-Fetch-Site": "none"}  # a request the person made themselves
    for headers, status in [(ours, 200), (theirs, 403), (same_origin, 200), (typed, 200)]:
        response = await client.post("/process_prompt", data={"prompt": "hi"}, headers=headers)
        assert response.status == status, headers


async def test_post_from_our_own_page_is_accepted(start_app):
    client = await start_app()
    origin = str(client.make_url("")).rstrip("/")
    headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin"}
    response = await client.post("/process_prompt", data={"prompt": "hi"}, headers=headers)
    assert response.status == 200


async def test_security_headers_on_page_and_stream(start_app):
    client = await start_app()
    page = await client.get("/")
    uid = await post_prompt(client)
    stream = await client.get("/response-stream", params={"uid": uid})
    await stream.read()
    for response in (page, stream):
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"


async def test_page_has_no_inline_script_or_style(start_app):
    """The page must satisfy its own CSP: no inline code anywhere."""
    client = await start_app()
    page = await (await client.get("/")).text()
    snippet = await (await client.post("/process_prompt", data={"prompt": "hi"})).text()
    uid = uid_from_snippet(snippet)
    _, events, _ = await read_stream(client, uid)
    for markup in [page, snippet, *(e.data for e in events)]:
        assert "<script>" not in markup and "style=" not in markup and "<style" not in markup
        assert " on" not in markup.replace(" one", "")  # no onclick= and such


async def test_password_never_appears_in_responses(start_app):
    client = await start_app(password="open sesame")
    page = await (await client.get("/", headers=basic("open sesame"))).text()
    assert "open sesame" not in page
