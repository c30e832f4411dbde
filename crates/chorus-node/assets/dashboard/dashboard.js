// The Chorus dashboard: reads GET /v1/dashboard/stream (SSE, one `tick` a second) and draws it.
// Read-only. Every value from the node is put in the page as text (never as HTML): emissary
// names and event texts come from other members.
"use strict";

const HISTORY = 600; // points kept per plot (10 minutes at one tick a second)
const hist = { t: [], coherence: [], dopamine: [], n: [], rate: [] };
let previous = null; // { at, events } of the last tick, for the rate
let ticks = 0;

const $ = (id) => document.getElementById(id);
const short = (s, n = 10) => (typeof s === "string" && s.length > n + 2 ? s.slice(0, n) + "…" : s ?? "–");
const fixed = (x, d = 3) => (typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–");

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fillTable(id, rows, columns, empty) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(empty, "empty");
    td.colSpan = columns;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(Array.isArray(c) ? cell(c[0], c[1]) : cell(c));
    body.appendChild(tr);
  }
  body.dataset.rows = String(rows.length);
}

function makePlot(id, series) {
  const el = $(id);
  const opts = {
    width: Math.max(200, el.clientWidth),
    height: 180,
    legend: { live: false },
    scales: { x: { time: true } },
    axes: [
      { stroke: "#8a94a0", grid: { stroke: "#243040" } },
      { stroke: "#8a94a0", grid: { stroke: "#243040" } },
    ],
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2 }))],
  };
  return new uPlot(opts, [[], ...series.map(() => [])], el);
}

const plots = {
  kairos: makePlot("plot-kairos", [
    { label: "coherence", color: "#39bae6" },
    { label: "dopamine", color: "#ffb454" },
  ]),
  n: makePlot("plot-n", [{ label: "N", color: "#7fd962" }]),
  rate: makePlot("plot-rate", [{ label: "events/s", color: "#d2a6ff" }]),
};

function push(key, v) {
  hist[key].push(v);
  if (hist[key].length > HISTORY) hist[key].shift();
}

function drawPlots() {
  const t = hist.t;
  plots.kairos.setData([t, hist.coherence, hist.dopamine]);
  plots.n.setData([t, hist.n]);
  plots.rate.setData([t, hist.rate]);
  for (const id of ["plot-kairos", "plot-n", "plot-rate"]) $(id).dataset.points = String(t.length);
}

function drawPhase(s) {
  const [re, im] = Array.isArray(s.t_tau) ? s.t_tau : [0, 0];
  const mag = Math.hypot(re, im);
  const scale = mag > 1 ? 100 / mag : 100; // |T_tau| can exceed 1: keep the tip on the picture
  const x = re * scale;
  const y = -im * scale;
  $("phase-arrow").setAttribute("x2", x.toFixed(1));
  $("phase-arrow").setAttribute("y2", y.toFixed(1));
  $("phase-tip").setAttribute("cx", x.toFixed(1));
  $("phase-tip").setAttribute("cy", y.toFixed(1));
  $("phase-tip").setAttribute("class", s.collapsed ? "tip collapsed" : "tip");
  const deg = (Math.atan2(im, re) * 180) / Math.PI;
  $("v-phase").textContent = `|T| ${fixed(mag)} · arg ${fixed(deg, 0)}°`;
}

function electionStatus(e, finalOrder) {
  if (e.exhausted && !e.winner) return ["exhausted", "failed"];
  if (!e.winner) return ["waiting", "tentative"];
  if (e.settled) return [finalOrder ? "final" : "settled", "final"];
  return ["tentative", "tentative"];
}

function drawElections(list, finalOrder) {
  const rows = list
    .slice()
    .reverse()
    .map((e) => {
      const answers = (e.answers || [])
        .map((a) => `${a.emissary ?? "?"}${a.failure ? " ✗" + a.failure : ""} ${a.model_ms != null ? a.model_ms + " ms" : ""}`.trim())
        .join(", ");
      const answered = `${e.intents} (${e.valid} valid)` + (answers ? ` — ${answers}` : "");
      const winner = e.winner ? `${e.emissary ?? "?"} (${e.model ?? "?"})` : "–";
      return [
        short(e.stimulus, 16),
        String(e.n),
        (e.selected || []).map((s) => s.name).join(", "),
        answered,
        winner,
        electionStatus(e, finalOrder),
      ];
    });
  fillTable("elections", rows, 6, "no election yet: POST /v1/swarm/intent starts one");
}

function drawEmissaries(list) {
  const rows = (list || []).map((e) => {
    const missed = Math.max(0, (e.selected || 0) - (e.intents || 0) - (e.in_flight || 0));
    const mean = e.intents > 0 ? `${Math.round(e.model_ms_total / e.intents)} ms` : "–";
    return [e.name, e.backend, String(e.selected), String(e.intents), String(missed), mean, String(e.failures), String(e.in_flight)];
  });
  fillTable("emissaries", rows, 8, "no emissary runs on this node (chorus node --emissary NAME)");
}

function drawMesh(st, state) {
  const inSync = new Set(st.in_sync_with || []);
  const rows = (st.peers || []).map((p) => [short(p, 24), inSync.has(p) ? ["yes", "final"] : ["catching up", "tentative"]]);
  fillTable("peers", rows, 2, "no peer connected");
  const sync = st.sync || {};
  $("mesh-summary").textContent =
    `mesh of ${st.mesh_size ?? (st.peers || []).length + 1} · lag ${sync.lag_events ?? 0} events` +
    (sync.catching_up ? " (catching up)" : "") +
    ` · writes ${st.writes_open ? "open" : "closed"} · order ${st.order ?? "?"}`;
  const f = (state && state.settled_frontier) || {};
  const held = f.held_by;
  let text = `${st.order === "final/1" ? "final" : "settled"}: ${st.settled ?? "–"} of ${st.events ?? "–"} events`;
  if (held && held.member) {
    text += ` · held back by ${held.role ?? "member"} ${short(held.member, 12)}` +
      (held.latest_lc != null ? ` (its latest event at lc ${held.latest_lc})` : " (it has published nothing yet)");
  } else {
    text += " · nothing holds it back";
  }
  $("finality").textContent = text;
}

function onTick(msg) {
  const d = JSON.parse(msg.data);
  const st = d.status || {};
  const state = d.state || {};
  const s = state.state || {};
  ticks += 1;
  $("live").textContent = "live";
  $("live").className = "badge on";
  $("live").dataset.ticks = String(ticks);
  $("timeline-name").textContent = `timeline ${short(st.timeline, 16)} · ${st.machine ?? ""}`;
  $("identity").textContent = `node ${short(st.peer_id, 20)} · state_hash ${short(st.state_hash, 16)} · up ${Math.round((st.uptime_ms || 0) / 1000)} s`;

  const events = st.events ?? state.events ?? 0;
  let rate = 0;
  if (previous && d.at > previous.at) rate = ((events - previous.events) * 1000) / (d.at - previous.at);
  previous = { at: d.at, events };
  $("v-events").textContent = String(events);
  $("v-rate").textContent = `${fixed(rate, 1)} events/s`;
  $("v-coherence").textContent = fixed(s.coherence);
  $("v-coherence").dataset.value = String(s.coherence);
  $("v-collapse").textContent = s.collapsed ? `collapsed (${s.collapses} collapses)` : `${s.collapses ?? 0} collapses`;
  $("v-dopamine").textContent = fixed(s.dopamine);
  $("v-cognitive").textContent = s.cognitive_state ?? "–";
  $("v-n").textContent = s.next_n != null ? String(s.next_n) : "–";
  $("v-integrations").textContent = `${s.integrations ?? 0} integrations, ${s.tokens ?? 0} tokens`;
  drawPhase(s);

  push("t", d.at / 1000);
  push("coherence", typeof s.coherence === "number" ? s.coherence : null);
  push("dopamine", typeof s.dopamine === "number" ? s.dopamine : null);
  push("n", typeof s.next_n === "number" ? s.next_n : null);
  push("rate", rate);
  drawPlots();
  drawMesh(st, state);
  drawElections(d.elections || [], st.order === "final/1");
  drawEmissaries(st.emissaries);
}

const source = new EventSource("/v1/dashboard/stream");
source.addEventListener("tick", onTick);
source.onerror = () => {
  // EventSource retries on its own. A node whose reads need a token (a private timeline) can
  // never be reached from here: the browser cannot send the token.
  $("live").textContent = ticks > 0 ? "disconnected: retrying" : "cannot connect (a private timeline needs a token)";
  $("live").className = "badge off";
};
window.addEventListener("resize", () => {
  for (const [id, p] of [["plot-kairos", plots.kairos], ["plot-n", plots.n], ["plot-rate", plots.rate]]) {
    p.setSize({ width: Math.max(200, $(id).clientWidth), height: 180 });
  }
});
