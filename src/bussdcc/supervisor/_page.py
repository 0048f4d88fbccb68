"""The status page served at ``GET /``: one self-contained HTML document, kept live by server-sent events."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bussdcc</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.2em; color: #1d2330; background: #f6f7f9; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
.meta { color: #5b6474; } .meta span { margin-right: 1.2em; }
table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { padding: .3em .7em; text-align: left; border-bottom: 1px solid #e4e7ec; white-space: nowrap; }
th { background: #eef0f4; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { padding: .1em .5em; border-radius: .8em; font-size: .9em; background: #e4e7ec; }
.s-running { background: #d3f2dc; color: #11602b; } .s-failed { background: #fbd5d5; color: #8a1212; }
.s-backoff, .s-unhealthy { background: #fde9c8; color: #7a4a00; } .s-starting, .s-stopping { background: #dbe6fb; }
button { font: inherit; padding: .1em .6em; margin-right: .2em; cursor: pointer; }
#counters td:first-child { color: #5b6474; }
#events { font: 12px ui-monospace, monospace; background: #fff; box-shadow: 0 1px 2px #0002;
  max-height: 24em; overflow: auto; padding: .4em .6em; }
#events div { white-space: pre-wrap; word-break: break-all; border-bottom: 1px solid #f0f1f4; }
.sev-WARNING { color: #7a4a00; } .sev-ERROR, .sev-CRITICAL { color: #8a1212; font-weight: 600; }
.filters { margin: .4em 0; } .filters input { width: 14em; }
#live { font-size: .85em; } .ok { color: #11602b; } .bad { color: #8a1212; }
#msg { color: #8a1212; margin-left: 1em; }
</style>
</head>
<body>
<h1>bussdcc <span id="name"></span></h1>
<div class="meta"><span id="version"></span><span id="pid"></span><span id="mode"></span>
<span id="live" class="bad">connecting…</span><span id="msg"></span></div>
<h2>Workers</h2>
<table id="workers"><thead><tr><th>worker</th><th>role</th><th>state</th><th>pid</th><th>restarts</th>
<th>uptime</th><th>RSS</th><th>CPU</th><th>last exit</th><th class="act">actions</th></tr></thead>
<tbody></tbody></table>
<h2>Counters</h2>
<table id="counters"><tbody></tbody></table>
<h2>Events</h2>
<div class="filters">
<label>lowest severity <select id="severity">
<option>DEBUG</option><option>INFO</option><option>WARNING</option><option>ERROR</option><option>CRITICAL</option>
</select></label>
<label>name <input id="pattern" placeholder="glob, e.g. worker.*"></label>
<label>recent <input id="lines" type="number" value="100" min="0" max="1000" style="width:5em"></label>
</div>
<div id="events"></div>
<script>
"use strict";
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("bussdcc-token", params.get("token"));
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("bussdcc-token");
let canAct = false, source = null;
const $ = (id) => document.getElementById(id);
const auth = () => (token ? { "Authorization": "Bearer " + token } : {});

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function seconds(s) {
  if (s === null || s === undefined) return "";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + (d || h || m ? m + "m " : "") + (s % 60) + "s";
}
function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}
async function act(name, action) {
  $("msg").textContent = "";
  try {
    const r = await fetch("/api/workers/" + encodeURIComponent(name) + "/" + action,
                          { method: "POST", headers: auth() });
    const answer = await r.json();
    if (!r.ok) $("msg").textContent = answer.error || ("HTTP " + r.status);
  } catch (e) { $("msg").textContent = String(e); }
}
function render(st) {
  $("name").textContent = st.name;
  $("version").textContent = "version " + st.version;
  $("pid").textContent = "pid " + st.pid;
  const body = $("workers").tBodies[0];
  const rows = [];
  for (const w of st.workers) {
    const tr = document.createElement("tr");
    tr.dataset.worker = w.name;
    cell(tr, w.name, "name");
    cell(tr, w.role);
    const s = cell(tr, "");
    const badge = document.createElement("span");
    badge.className = "state s-" + w.state;
    badge.textContent = w.state;
    s.appendChild(badge);
    s.className = "state-cell";
    cell(tr, w.pid, "num pid");
    cell(tr, w.restarts, "num restarts");
    cell(tr, seconds(w.uptime), "num");
    cell(tr, bytes(w.rss), "num");
    cell(tr, w.cpu_percent === null ? "" : w.cpu_percent.toFixed(1) + " %", "num");
    cell(tr, w.last_exit);
    const a = cell(tr, "", "act");
    if (canAct) {
      for (const action of ["restart", "stop", "start"]) {
        const b = document.createElement("button");
        b.textContent = action;
        b.dataset.action = action;
        const idle = w.state === "stopped" || w.state === "failed";
        b.disabled = action === "start" ? !idle : (action === "stop" && idle);
        b.onclick = () => act(w.name, action);
        a.appendChild(b);
      }
    }
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  for (const el of document.querySelectorAll(".act")) el.style.display = canAct ? "" : "none";
  const counters = $("counters").tBodies[0];
  const crows = [];
  for (const [k, v] of Object.entries(st.stats)) {
    if (v !== null && typeof v === "object") continue;
    const tr = document.createElement("tr");
    cell(tr, k.replaceAll("_", " "));
    cell(tr, v, "num");
    crows.push(tr);
  }
  counters.replaceChildren(...crows);
}
function addEvent(e) {
  const box = $("events");
  const div = document.createElement("div");
  div.className = "sev-" + e.severity;
  div.textContent = e.time + " " + e.severity.padEnd(8) + " " + e.name + " [" + e.source + "] " +
    JSON.stringify(e.payload);
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
  box.appendChild(div);
  while (box.childElementCount > 1000) box.firstChild.remove();
  if (atBottom) box.scrollTop = box.scrollHeight;
}
function connect() {
  if (source) source.close();
  $("events").replaceChildren();
  const q = new URLSearchParams({ severity: $("severity").value, name: $("pattern").value,
                                  n: $("lines").value || "0" });
  source = new EventSource("/api/stream?" + q);
  source.addEventListener("status", (ev) => render(JSON.parse(ev.data)));
  source.addEventListener("message", (ev) => addEvent(JSON.parse(ev.data)));
  source.addEventListener("dropped", () => { $("live").textContent = "reconnecting (too slow)"; });
  source.onopen = () => { $("live").textContent = "live"; $("live").className = "ok"; };
  source.onerror = () => { $("live").textContent = "disconnected, retrying…"; $("live").className = "bad"; };
}
async function start() {
  try {
    const r = await fetch("/api/status", { headers: auth() });
    const st = await r.json();
    canAct = st.can_act;
    render(st);
  } catch (e) { $("msg").textContent = String(e); }
  $("mode").textContent = canAct ? "actions enabled" : "read-only (open the login URL to act)";
  connect();
}
for (const id of ["severity", "pattern", "lines"]) $(id).addEventListener("change", connect);
start();
</script>
</body>
</html>
"""
