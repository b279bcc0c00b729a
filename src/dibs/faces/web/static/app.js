// The dibs dashboard: fetch /api/state and /api/metrics when the log grows (server-sent
// events), read new events into the feed, count claims down. No build step, no library.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = (path) => token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const FEED_KEPT = 500, FEED_SHOWN = 150;
let fetchedAt = 0;
let claims = [];
let agents = [];
let feed = [];
let feedSeq = -1;
let report = null;
let inbox = {};  // unread messages per agent (absent before the inbox existed: none shown)

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
    for (const [text, cls, title] of row) {
      const td = cell(text, cls);
      if (title) td.title = title;
      tr.append(td);
    }
    body.append(tr);
  }
}

// "45 s", "11 min", "2 h 5 min", "3 d": what a person reads, not "641 s".
function human(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) {
    const h = Math.floor(s / 3600), m = Math.round((s % 3600) / 60);
    return m ? `${h} h ${m} min` : `${h} h`;
  }
  return `${Math.round(s / 86400)} d`;
}

const ago = (seconds) => seconds == null ? "" : seconds < 1 ? "just now" : `${human(seconds)} ago`;
const clock = (iso) => iso ? iso.slice(11, 19) : "";
const sinceWall = (iso) => (Date.now() - Date.parse(iso)) / 1000;

function countdown() {
  const spent = (Date.now() - fetchedAt) / 1000;
  fill("claims", claims.map((c) => {
    const left = c.expires_in - spent;
    return [[c.resource], [c.agent], [c.mode], [c.token],
            [left > 0 ? human(Math.ceil(left)) : "expired", left > 0 ? "" : "dead"], [c.note || ""]];
  }), "no claims");
}

// Stuck: alive but without progress for agents.stuck_after; ``idle`` is how long (seconds).
const stuck = (a) => a.status === "stuck";
const stuckText = (a) => a.idle != null ? `no progress for ${human(a.idle)}` : "no progress";
const unread = (a) => inbox[a.name] || "";

function showAgents() {
  const all = $("show-dead").checked;
  const shown = all ? agents : agents.filter((a) => a.status !== "dead");
  fill("agents", shown.map((a) => [[a.name], [stuck(a) ? `⚠ stuck` : a.status, a.status, stuck(a) ? stuckText(a) : ""],
                                   [a.claims], [unread(a), unread(a) ? "unread" : "", unread(a) ? `${unread(a)} unread` : ""],
                                   [ago(a.seen_ago)], [a.issue || ""], [a.worktree || ""]]), all ? "no agents" : "no live agents");
  const hidden = agents.length - shown.length;
  $("agents-hidden").textContent = hidden ? `${hidden} dead agent${hidden > 1 ? "s" : ""} hidden` : "";
  fill("stuck", agents.filter(stuck).map((a) => [[a.name, "stuck"], [a.idle != null ? human(a.idle) : "", "", stuckText(a)],
                                                  [a.claims], [unread(a)], [ago(a.seen_ago)]]), "no agent is stuck");
}

async function refresh() {
  const response = await fetch(q("api/state"));
  if (!response.ok) { $("summary").textContent = `error ${response.status}`; return; }
  const state = await response.json();
  fetchedAt = Date.now();
  claims = state.claims;
  agents = state.agents;
  inbox = state.inbox || {};
  $("summary").textContent = state.summary;
  showAgents();
  fill("worktrees", state.worktrees.map((w) => [[w.path], [w.branch], [w.agent], [w.issue]]), "no worktrees");
  fill("pool", state.pool.map((p) => [[p.slot], [p.path], [p.agent || "free", p.agent ? "" : "muted"]]), "no pool");
  fill("queue", state.queue.map((e) => [[e.id], [e.state], [e.branch], [e.issue], [e.agent]]), "the queue is empty");
  countdown();
  await readEvents(state.seq);
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

// Stacked bars with a y axis (0 and the top, in *unit*), start / middle / end times on the
// x axis, and a tooltip per bar naming its time slice and every value.
function chart(svg, points, keys, colors, format) {
  const left = 56, right = 592, top = 8, bottom = 112;
  svg.replaceChildren();
  if (!points.length) { svg.append(el("text", { x: 300, y: 60, "text-anchor": "middle", class: "axis" }, "nothing yet")); return; }
  const totals = points.map((p) => keys.reduce((sum, k) => sum + (p[k] || 0), 0));
  const max = Math.max(...totals) || 1;
  const w = (right - left) / points.length;
  svg.append(el("line", { x1: left, y1: bottom, x2: right, y2: bottom, class: "axisline" }));
  svg.append(el("line", { x1: left, y1: top, x2: left, y2: bottom, class: "axisline" }));
  svg.append(el("text", { x: left - 4, y: top + 8, "text-anchor": "end", class: "axis" }, format(max)));
  svg.append(el("text", { x: left - 4, y: bottom, "text-anchor": "end", class: "axis" }, format(0)));
  const step = points.length > 1 ? Date.parse(points[1].at) - Date.parse(points[0].at) : 0;
  [0, Math.floor(points.length / 2), points.length - 1].forEach((i, n) => {
    const anchor = ["start", "middle", "end"][n];
    const x = n === 2 ? right : left + i * w + (n === 1 ? w / 2 : 0);
    svg.append(el("text", { x, y: bottom + 14, "text-anchor": anchor, class: "axis" }, clock(points[i].at) + (n === 2 ? " UTC" : "")));
  });
  points.forEach((p, i) => {
    const group = el("g", { class: "bar" });
    const until = step ? new Date(Date.parse(p.at) + step).toISOString() : p.at;
    group.append(el("title", {}, `${clock(p.at)}–${clock(until)} UTC: ` + keys.map((k) => `${format(p[k] || 0)} ${k.replace(/_/g, " ")}`).join(", ")));
    group.append(el("rect", { x: left + i * w, y: top, width: w, height: bottom - top, fill: "transparent" }));
    let y = bottom;
    keys.forEach((k, n) => {
      const h = ((p[k] || 0) / max) * (bottom - top);
      group.append(el("rect", { x: left + i * w + 1, width: Math.max(1, w - 2), y: y - h, height: h, fill: colors[n] }));
      y -= h;
    });
    svg.append(group);
  });
}

async function charts() {
  const since = $("range").value;
  const response = await fetch(q(since ? `api/metrics?since=${since}` : "api/metrics"));
  if (!response.ok) return;
  const m = await response.json();
  report = m;
  timeline();
  chart($("contention"), m.series, ["acquired", "refused"], ["#2f855a", "#c53030"], (v) => `${Math.round(v)} call${Math.round(v) === 1 ? "" : "s"}`);
  chart($("holds"), m.series, ["mean_hold_seconds"], ["#3b6fd1"], human);
  const h = m.claims.hold_seconds;
  $("holds-note").textContent = h.count
    ? `mean hold per slice; p50 ${human(h.p50)}, p99 ${human(h.p99)} over ${h.count} leases; conflict rate ${(100 * m.claims.conflict_rate).toFixed(1)}%`
    : "no lease has ended yet";
  fill("landings", m.landings.map((l) => [
    [ago(sinceWall(l.at)), "", l.at], [l.outcome, l.outcome], [l.branch || l.id], [l.agent || ""],
    [l.gate ? `${l.gate}${l.exit != null ? ` (exit ${l.exit})` : ""}` : ""], [l.reason || "", "reason"],
    [(l.files || []).join(", "), "paths"], [human(l.seconds)]]), "nothing landed or failed yet");
  fill("hotspots", m.hotspots.map((s) => [[s.resource], [s.refusals], [s.waited_seconds ? human(s.waited_seconds) : "–"]]), "no conflicts");
  const pool = m.pool;
  $("pool-note").textContent = pool.slots ? `${Math.round(100 * pool.utilization)}% of slot time used over the period` : "";
}

// One row per agent shown in the agents panel (dead ones only when asked for): bars for
// claims held and waits, ticks for refusals, dots for landings, over the period's time axis.
function timeline() {
  const svg = $("timeline");
  svg.replaceChildren();
  if (!report || !report.since) return;
  const all = $("show-dead").checked;
  const names = Object.keys(report.timeline).filter((n) => agents.some((a) => a.name === n && (all || a.status !== "dead")));
  const start = Date.parse(report.since), end = Math.max(Date.parse(report.until), start + 1000);
  const left = 130, right = 990, row = 20, top = 4;
  const x = (iso) => left + ((iso ? Date.parse(iso) : end) - start) / (end - start) * (right - left);
  const height = top + names.length * row + 22;
  svg.setAttribute("viewBox", `0 0 1000 ${height}`);
  svg.style.height = `${height}px`;
  if (!names.length) { svg.append(el("text", { x: 500, y: 20, "text-anchor": "middle", class: "axis" }, "no agent did anything in this period")); return; }
  names.forEach((name, i) => {
    const y = top + i * row;
    svg.append(el("text", { x: left - 6, y: y + 13, "text-anchor": "end", class: "name" }, name));
    svg.append(el("line", { x1: left, y1: y + row - 2, x2: right, y2: y + row - 2, class: "axisline", "stroke-opacity": 0.2 }));
    const spans = (m) => m.kind === "stuck" ? -1 : m.kind === "held" || m.kind === "waited" ? 0 : 1;  // marks over bars, bars over stuck periods
    for (const m of [...report.timeline[name]].sort((a, b) => spans(a) - spans(b))) {
      const group = el("g", {});
      let tip;
      if (m.kind === "stuck") {
        const from = Math.max(left, x(m.from)), to = Math.max(from + 2, x(m.to));
        const seconds = ((m.to ? Date.parse(m.to) : Date.now()) - Date.parse(m.from)) / 1000;
        tip = `${name} was stuck (alive, no progress) from ${clock(m.from)}${m.to ? ` to ${clock(m.to)}` : ", still"} (${human(seconds)})`;
        group.append(el("rect", { x: from, y: y, width: to - from, height: row - 2, fill: "#b7791f", "fill-opacity": 0.25, class: "stuck-period" }));
      } else if (m.kind === "held" || m.kind === "waited") {
        const from = Math.max(left, x(m.from)), to = Math.max(from + 2, x(m.to));
        const seconds = ((m.to ? Date.parse(m.to) : Date.now()) - Date.parse(m.from)) / 1000;
        tip = `${name} ${m.kind === "held" ? "held" : "waited for"} ${m.what} from ${clock(m.from)}${m.to ? ` to ${clock(m.to)}` : ", still held"} (${human(seconds)})`;
        group.append(el("rect", { x: from, y: y + (m.kind === "held" ? 3 : 7), width: to - from, height: m.kind === "held" ? 12 : 4, fill: m.kind === "held" ? "#3b6fd1" : "#dd8a2a", "fill-opacity": 0.8 }));
      } else if (m.kind === "refused") {
        tip = `${name} was refused ${m.what} at ${clock(m.at)}`;
        group.append(el("rect", { x: x(m.at) - 1, y: y + 1, width: 3, height: 16, fill: "#c53030" }));
      } else {
        tip = `${name}: ${m.what} ${m.kind} at ${clock(m.at)}`;
        const fills = { landed: "#2f855a", failed: "#c53030", returned: "#b7791f" };
        group.append(el("circle", { cx: x(m.at), cy: y + 9, r: 5, fill: fills[m.kind] || "#6b7280" }));
      }
      group.prepend(el("title", {}, tip));
      svg.append(group);
    }
  });
  const bottom = top + names.length * row;
  svg.append(el("line", { x1: left, y1: bottom, x2: right, y2: bottom, class: "axisline" }));
  svg.append(el("text", { x: left, y: bottom + 14, class: "axis" }, clock(report.since)));
  svg.append(el("text", { x: (left + right) / 2, y: bottom + 14, "text-anchor": "middle", class: "axis" }, `${human((end - start) / 1000)} shown`));
  svg.append(el("text", { x: right, y: bottom + 14, "text-anchor": "end", class: "axis" }, `${clock(report.until)} UTC`));
}

async function readyTasks() {
  const response = await fetch(q("api/tasks"));
  const report = await response.json();
  if (!response.ok) { $("tasks-note").textContent = report.error || `error ${response.status}`; return; }
  fill("tasks", report.ready.map((t) => [[t.id], [t.title || ""], [t.priority], [(t.source || "").split("/").slice(-2).join("/"), "", t.source]]), "no task is ready");
  const notes = [];
  if (report.not_ready) notes.push(`${report.not_ready} more not ready (held, blocked or done)`);
  if (report.problems.length) notes.push(`${report.problems.length} task${report.problems.length > 1 ? "s" : ""} skipped: ${report.problems[0]}`);
  $("tasks-note").textContent = notes.join("; ");
}

function detail(e) {
  const v = e.value || {};
  const parts = [];
  if (e.by) parts.push(`by ${e.by}`);
  if (e.reason || v.reason) parts.push(e.reason || v.reason);
  if (e.waited != null) parts.push(`waited ${human(e.waited)}`);
  if (v.gate) parts.push(`gate ${v.gate}`);
  if (v.branch) parts.push(v.branch);
  if (v.files && v.files.length) parts.push(`paths ${v.files.join(", ")}`);
  const d = e.details || {};
  if (e.op === "stuck" && d.idle != null) parts.push(`no progress for ${human(d.idle)}`);
  if (e.note) parts.push(e.note);
  if (e.token != null) parts.push(`token ${e.token}`);
  return parts.join("; ");
}

function showFeed() {
  const agent = $("feed-agent").value.trim(), kind = $("feed-kind").value, resource = $("feed-resource").value.trim();
  const kinds = [...new Set(feed.map((e) => e.op))].sort();
  const select = $("feed-kind");
  if (select.options.length !== kinds.length + 1) {
    select.replaceChildren(new Option("every kind", ""), ...kinds.map((k) => new Option(k, k)));
    select.value = kinds.includes(kind) ? kind : "";
  }
  const shown = feed.filter((e) => (!agent || (e.agent || "").includes(agent))
    && (!kind || e.op === kind) && (!resource || (e.resource || "").includes(resource)));
  fill("feed", shown.slice(-FEED_SHOWN).reverse().map((e) => [
    [e.seq], [clock(e.wall), "", e.wall], [e.op, e.op === "refuse" || e.op === "land-fail" ? "failed" : e.op === "stuck" ? "stuck" : ""],
    [e.agent || ""], [e.resource || e.key || ""], [detail(e)]]), feed.length ? "no event matches" : "no events yet");
}

async function readEvents(seq) {
  if (feedSeq < 0) feedSeq = Math.max(0, seq - FEED_KEPT);
  if (seq <= feedSeq) return;
  const response = await fetch(q(`api/events?since=${feedSeq}&limit=${FEED_KEPT}`));
  if (!response.ok) return;
  const events = (await response.json()).filter((e) => e.seq > feedSeq);  // two reads may overlap
  if (!events.length) return;
  feedSeq = events[events.length - 1].seq;
  feed = feed.concat(events).slice(-FEED_KEPT);
  showFeed();
}

// At most one call per *ms*, the last one always made: a busy log grows many times a second,
// and the figures and task sources are read whole.
function throttle(fn, ms) {
  let last = 0, timer = null;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}
const chartsSoon = throttle(charts, 2000), tasksSoon = throttle(readyTasks, 5000);

function connect() {
  const source = new EventSource(q("api/stream"));
  const live = $("live");
  source.addEventListener("seq", () => { refresh(); chartsSoon(); tasksSoon(); });
  source.onopen = () => { live.textContent = "live"; live.className = "ok"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "bad"; };
}

$("show-dead").addEventListener("change", () => { showAgents(); timeline(); });
$("range").addEventListener("change", charts);
for (const id of ["feed-agent", "feed-kind", "feed-resource"]) $(id).addEventListener("input", showFeed);
refresh();
charts();
readyTasks();
connect();
setInterval(countdown, 1000);
setInterval(readyTasks, 15000);  // task files change without the log growing
setInterval(refresh, 10000);  // an agent turns stale or stuck as time passes, the log unchanged
