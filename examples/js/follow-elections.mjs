// Follows a Chorus node's elections live: GET /v1/swarm/elections?stream=true is a stream of
// Server-Sent Events, one per change of an election (`winner`, `replaced`, `settled`, …).
// A browser has EventSource built in; Node.js takes the npm package `eventsource`.
//
//   cd examples/js && npm install && node follow-elections.mjs [127.0.0.1:4711]
import { EventSource } from "eventsource";

const api = process.argv[2] ?? "127.0.0.1:4711";
const token = process.env.CHORUS_API_TOKEN;
const source = new EventSource(`http://${api}/v1/swarm/elections?stream=true`, {
  // A private timeline's reads need the token; EventSource in Node lets us add the header.
  fetch: (url, init) =>
    fetch(url, { ...init, headers: { ...init.headers, ...(token ? { authorization: `Bearer ${token}` } : {}) } }),
});
for (const kind of ["election", "winner", "replaced", "settled", "lagged"]) {
  source.addEventListener(kind, (ev) => {
    const e = JSON.parse(ev.data);
    const who = e.winner ? `${e.emissary} (${e.model})` : "no winner yet";
    console.log(`${kind.padEnd(8)} ${e.stimulus ?? ""} → ${who}; ${e.intents ?? 0} answered${e.settled ? ", settled" : ""}`);
  });
}
source.onopen = () => console.error(`following the elections of ${api}; Ctrl-C to stop`);
source.onerror = (err) => console.error("stream error (EventSource reconnects):", err.message ?? err);
