"""The official `openai` client (PyPI) retrying a chat completion that timed out (504), with an
Idempotency-Key: the node must answer the retry with the first request's election.

usage: openai_retry.py BASE_URL KEY   (e.g. http://127.0.0.1:8080/v1 retry-1)
Prints one JSON line: the stimulus the answer is for, the answer, whether it was a replay.
"""
import json
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="unused-on-loopback", timeout=30, max_retries=3)
raw = client.chat.completions.with_raw_response.create(
    model="chorus",
    messages=[{"role": "user", "content": "The bell of the inn rings once, slowly."}],
    # The first attempt gives up (504) before the slow emissary answers; the SDK retries.
    extra_body={"timeout_ms": 700},
    extra_headers={"Idempotency-Key": sys.argv[2]},
)
r = raw.parse()
print(json.dumps({
    "stimulus": r.model_extra["chorus"]["stimulus"],
    "content": r.choices[0].message.content,
    "replayed": raw.headers.get("idempotent-replayed"),
    "retries": raw.retries_taken,
    "total_tokens": r.usage.total_tokens,
    "created": r.created,
}))
