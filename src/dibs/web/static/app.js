// The dibs dashboard: fetch /api/state when the log grows (server-sent events), count down.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = (path) => token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
let fetchedAt = 0;
let claims = [];

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(id, rows, empty) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(empty);
    td.colSpan = document.querySelectorAll(`#${id} th`).length;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const [text, cls] of row) tr.append(cell(text, cls));
    body.append(tr);
  }
}

function ago(seconds) {
  if (seconds == null) return "";
  return seconds < 90 ? `${Math.round(seconds)} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function countdown() {
  const spent = (Date.now() - fetchedAt) / 1000;
  fill("claims", claims.map((c) => {
    const left = c.expires_in - spent;
    return [[c.resource], [c.agent], [c.mode], [c.token],
            [left > 0 ? `${Math.ceil(left)} s` : "expired", left > 0 ? "" : "dead"], [c.note || ""]];
  }), "no claims");
}

async function refresh() {
  const response = await fetch(q("api/state"));
  if (!response.ok) { document.getElementById("summary").textContent = `error ${response.status}`; return; }
  const state = await response.json();
  fetchedAt = Date.now();
  claims = state.claims;
  document.getElementById("summary").textContent = state.summary;
  fill("agents", state.agents.map((a) => [[a.name], [a.status, a.status], [a.claims], [ago(a.seen_ago)],
                                          [a.issue || ""], [a.worktree || ""]]), "no agents");
  fill("worktrees", state.worktrees.map((w) => [[w.path], [w.branch], [w.agent], [w.issue]]), "no worktrees");
  fill("queue", state.queue.map((e) => [[e.id], [e.state], [e.branch], [e.issue], [e.agent]]), "the queue is empty");
  countdown();
}

function bars(svg, values, colors) {
  const width = 600, height = 110, n = values.length || 1, w = width / n;
  const top = Math.max(1, ...values.map((v) => v.reduce((a, b) => a + b, 0)));
  svg.replaceChildren();
  values.forEach((stack, i) => {
    let y = height;
    stack.forEach((v, k) => {
      const h = (v / top) * (height - 10);
      const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      rect.setAttribute("x", String(i * w + 1));
      rect.setAttribute("width", String(Math.max(1, w - 2)));
      rect.setAttribute("y", String(y - h));
      rect.setAttribute("height", String(h));
      rect.setAttribute("fill", colors[k]);
      y -= h;
      svg.append(rect);
    });
  });
}

async function charts() {
  const response = await fetch(q("api/metrics"));
  if (!response.ok) return;
  const m = await response.json();
  bars(document.getElementById("contention"), m.series.map((p) => [p.acquired, p.refused]), ["#2f855a", "#c53030"]);
  bars(document.getElementById("holds"), m.series.map((p) => [p.mean_hold_seconds || 0]), ["#3b6fd1"]);
  const h = m.claims.hold_seconds;
  document.getElementById("holds-note").textContent =
    h.count ? `p50 ${h.p50.toFixed(1)} s, p99 ${h.p99.toFixed(1)} s over ${h.count} leases; conflict rate ${(100 * m.claims.conflict_rate).toFixed(1)}%` : "no lease has ended yet";
}

function connect() {
  const source = new EventSource(q("api/stream"));
  const live = document.getElementById("live");
  source.addEventListener("seq", () => { refresh(); charts(); });
  source.onopen = () => { live.textContent = "live"; live.className = "ok"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "bad"; };
}

refresh();
charts();
connect();
setInterval(countdown, 1000);
