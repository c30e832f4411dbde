"""The official `openai` client (PyPI) against a node whose gateway allows one request per burst
(`--gateway-rate 4`): the model list, a request the node refuses (400) and one beyond the rate
(429), each read by the SDK as OpenAI's error object.

usage: openai_errors.py BASE_URL   (e.g. http://127.0.0.1:8080/v1)
Exits non-zero on any mismatch.
"""
import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="unused-on-loopback", timeout=30, max_retries=0)

models = client.models.list()
assert [m.id for m in models.data] == ["chorus"], models

try:
    client.chat.completions.create(model="chorus", messages=[])
    sys.exit("an empty conversation was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400, e
    assert "messages must not be empty" in e.message, e.message
    assert e.body["type"] == "invalid_request_error", e.body
    print("400 ok:", e.message)

try:
    # A short election deadline: a node without the limit answers 504 in a second, not 30 s.
    client.chat.completions.create(
        model="chorus",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"timeout_ms": 1000},
    )
    sys.exit("a request beyond the gateway's rate was accepted")
except openai.RateLimitError as e:
    assert e.status_code == 429, e
    assert e.code == "rate_limit_exceeded", e.body
    assert e.body["type"] == "rate_limit_error", e.body
    assert "retry in" in e.message, e.message
    assert int(e.response.headers["retry-after"]) >= 1, e.response.headers
    print("429 ok:", e.message)
