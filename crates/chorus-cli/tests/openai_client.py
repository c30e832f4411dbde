"""Talks to a Chorus node's /v1/chat/completions with the official `openai` client (PyPI).

usage: openai_client.py BASE_URL   (e.g. http://127.0.0.1:8080/v1)
Exits non-zero on any mismatch. The node's emissaries run the embedded model, so the answer
is the elected intent: a JSON array of command strings.
"""
import json
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="unused-on-loopback", timeout=120, max_retries=0)
messages = [
    {"role": "system", "content": "You are Mira, who runs the inn at Emberfall."},
    {"role": "user", "content": "A stranger in a wet cloak asks for a room."},
]

r = client.chat.completions.create(model="chorus", messages=messages)
text = r.choices[0].message.content
commands = json.loads(text)
assert isinstance(commands, list) and commands and all(isinstance(c, str) for c in commands), text
assert r.choices[0].finish_reason == "stop"
print("non-streaming ok:", text)

pieces = []
finish = None
for chunk in client.chat.completions.create(model="chorus", messages=messages, stream=True):
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    if delta.content:
        pieces.append(delta.content)
    finish = chunk.choices[0].finish_reason or finish
streamed = "".join(pieces)
commands = json.loads(streamed)
assert isinstance(commands, list) and commands and all(isinstance(c, str) for c in commands), streamed
assert finish == "stop", finish
assert len(pieces) >= 2, pieces
print("streaming ok:", streamed, f"({len(pieces)} chunks)")
