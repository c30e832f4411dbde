#!/usr/bin/env bash
# A walk through a running node's HTTP API with curl (default 127.0.0.1:4711; set API=…).
# Writes carry CHORUS_API_TOKEN when it is set.
set -euo pipefail
API=${API:-127.0.0.1:4711}
auth=()
[[ -n ${CHORUS_API_TOKEN:-} ]] && auth=(-H "authorization: Bearer $CHORUS_API_TOKEN")
say() { printf '\n# %s\n' "$*"; }

say "liveness and readiness"
curl -s "http://$API/health"
curl -s "http://$API/ready"; echo

say "the node: peers, events, state_hash, sync"
curl -s "http://$API/v1/status" | head -c 600; echo

say "append two stimuli (acknowledged once durable)"
curl -s "${auth[@]}" -H 'content-type: application/json' \
  -d '{"kind": "stimulus", "text": "a bell rings {i}", "count": 2}' "http://$API/v1/events"; echo

say "the first events of the total order"
curl -s "http://$API/v1/events?limit=3"; echo

say "the swarm: one stimulus, the elected answer (needs emissaries on the mesh)"
curl -s "${auth[@]}" -H 'content-type: application/json' -d '{
  "npc_name": "Mira", "role": "Innkeeper", "backstory": "Runs the inn.",
  "context": "A stranger enters.", "timeout_ms": 60000}' "http://$API/v1/swarm/intent"; echo

say "every election the state tracks"
curl -s "http://$API/v1/swarm/elections" | head -c 600; echo

say "the replicated state (KAIROS: coherence, dopamine, N, …)"
curl -s "http://$API/v1/state" | head -c 600; echo

say "a backup: the timeline as a CAR file, from one snapshot of the store"
curl -s -o backup.car -D - "http://$API/v1/export?format=car" | grep -i '^chorus-'
ls -l backup.car

say "Prometheus metrics"
curl -s "http://$API/metrics" | head -5
