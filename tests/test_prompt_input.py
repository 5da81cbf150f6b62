"""Bad POSTs get a readable message and a 4xx that htmx shows; the server keeps serving."""

import pytest
from aiohttp import FormData

from tests.conftest import post_prompt, read_stream
from tests.each_store import start_app_on_each_store  # noqa: F401  (both stores)

REFUSALS = [
    ("missing-prompt", {"data": {"other": "x"}}, 422, "Please type a prompt first."),
    ("empty-prompt", {"data": {"prompt": ""}}, 422, "Please type a prompt first."),
    ("whitespace-only", {"data": {"prompt": " \n\t "}}, 422, "Please type a prompt first."),
    ("over-the-length-limit", {"data": {"prompt": "x" * 101}}, 413,
     "The prompt is 101 characters long; the limit is 100."),
    ("body-over-the-size-limit", {"data": {"prompt": "x" * 5000}}, 413,
     "The request is too large."),
    ("json-instead-of-a-form", {"json": {"prompt": "hi"}}, 415,
     "Send the prompt as a form field named &#39;prompt&#39;."),
    ("no-body", {}, 415, "Send the prompt as a form field"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [refusal[1:] for refusal in REFUSALS],
    ids=[refusal[0] for refusal in REFUSALS],
)
async def test_bad_post_gets_a_readable_refusal(start_app, request_kwargs, status, message):
    client = await start_app(max_prompt_chars=100, max_body_bytes=4096)
    response = await client.post("/process_prompt", **request_kwargs)
    body = await response.text()

    assert response.status == status
    assert response.content_type == "text/html"
    assert body.startswith('<p class="refusal" role="alert">')
    assert message in body
    assert (await client.get("/healthz")).status == 200
    assert (await (await client.get("/healthz")).json())["uids_pending"] == 0


async def test_a_multipart_form_or_a_file_is_refused(start_app):
    # The page sends an urlencoded form; multipart costs far more to parse.
    client = await start_app()
    for value, options in [("from a multipart form", {}), (b"bytes", {"filename": "p.txt"})]:
        form = FormData(default_to_multipart=True)
        form.add_field("prompt", value, **options)
        response = await client.post("/process_prompt", data=form)
        assert response.status == 415
        assert "form field named" in await response.text()


async def test_prompt_at_the_limit_is_accepted_exactly(start_app):
    client = await start_app(max_prompt_chars=100)
    prompt = "  é" + "x" * 97  # 100 characters, more than 100 bytes
    uid = await post_prompt(client, prompt)
    _, events, _ = await read_stream(client, uid)
    assert events[-2].event == "final_answer"


async def test_full_store_answers_503_with_retry_after(start_app):
    client = await start_app(max_pending=2)
    await post_prompt(client)
    await post_prompt(client)
    response = await client.post("/process_prompt", data={"prompt": "third"})

    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert "Too many prompts are waiting" in await response.text()


async def test_refusal_never_becomes_a_server_error_on_a_broken_body(start_app):
    client = await start_app()
    response = await client.post(
        "/process_prompt",
        data=b"--nope\r\nnot really multipart",
        headers={"Content-Type": "multipart/form-data; boundary=other"},
    )
    assert 400 <= response.status < 500
    assert "refusal" in await response.text()


FORM = "application/x-www-form-urlencoded"
BROKEN_BODIES = {
    "unknown-charset": (b"prompt=hi", {"Content-Type": f"{FORM}; charset=bogus"}),
}  # fmt: skip


@pytest.mark.parametrize(("body", "headers"), BROKEN_BODIES.values(), ids=BROKEN_BODIES.keys())
async def test_a_malformed_body_is_a_400_not_a_server_error(start_app, body, headers):
    client = await start_app()
    response = await client.post("/process_prompt", data=body, headers=headers)
    assert response.status == 400
    assert "The form could not be read" in await response.text()
    assert (await client.get("/healthz")).status == 200
