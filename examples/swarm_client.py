#!/usr/bin/env python3
"""A client of a Chorus node's swarm API, with Python's standard library only.

    python3 examples/swarm_client.py "A stranger enters the inn."   [--api 127.0.0.1:4711]

Sends one stimulus to POST /v1/swarm/intent (the original swarm server's request), prints the
election the replicated state decided (winner, its commands, final or tentative), then the
same election as GET /v1/swarm/elections lists it. With CHORUS_API_TOKEN set it is sent as the
bearer token (needed when the node has one).
"""
import argparse
import json
import os
import urllib.error
import urllib.request


def call(api, path, body=None):
    req = urllib.request.Request(f"http://{api}{path}", method="POST" if body else "GET")
    req.add_header("content-type", "application/json")
    token = os.environ.get("CHORUS_API_TOKEN")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    data = json.dumps(body).encode() if body else None
    try:
        with urllib.request.urlopen(req, data=data, timeout=120) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{path}: {e.code}: {e.read().decode(errors='replace')}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("context", help="what happens (the stimulus)")
    p.add_argument("--api", default="127.0.0.1:4711", help="the node's API address")
    p.add_argument("--npc", default="Mira")
    p.add_argument("--role", default="Innkeeper")
    p.add_argument("--backstory", default="Runs the inn at the crossroads.")
    a = p.parse_args()
    r = call(a.api, "/v1/swarm/intent", {
        "npc_name": a.npc, "role": a.role, "backstory": a.backstory,
        "context": a.context, "timeout_ms": 60000,
    })
    state = "final" if r.get("final") else ("settled" if r.get("settled") else "tentative")
    print(f"stimulus  {r['stimulus']}")
    print(f"winner    {r.get('emissary')} ({r.get('model')}), {state}, after {r.get('elapsed_ms')} ms")
    print(f"commands  {r.get('commands')}")
    listed = call(a.api, "/v1/swarm/elections")["elections"]
    e = next(e for e in listed if e["stimulus"] == r["stimulus"])
    asked = ", ".join(s["name"] for s in e["selected"])
    print(f"asked     {asked} (N = {e['n']}); {e['intents']} answered, {e['valid']} valid")


if __name__ == "__main__":
    main()
