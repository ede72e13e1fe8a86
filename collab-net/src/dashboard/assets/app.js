// The collab dashboard: draws the board the server pushes and posts an operator's settings.
// window.collabBoard holds the latest board and window.collabEvents counts the pushes (the
// browser test reads both).
"use strict";

const $ = (id) => document.getElementById(id);
window.collabEvents = 0;
window.collabBoard = null;

const token = (() => {
  const m = /token=([^&]+)/.exec(location.hash);
  if (m) {
    let t = m[1];
    try { t = decodeURIComponent(t); } catch (_) { /* keep it as it is */ }
    sessionStorage.setItem("collab-operator-token", t);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("collab-operator-token") || "";
})();
$("token").value = token;

function chart(el, title, series, yLabel) {
  const opts = {
    title, width: 460, height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "seconds" }, { label: yLabel }],
    series: [{ label: "t" }, ...series],
  };
  const data = [[], ...series.map(() => [])];
  return new uPlot(opts, data, $(el));
}

const cmpStyle = { dash: [6, 4], width: 1.5 };
const charts = {
  throughput: chart("chart-throughput", "Throughput (results/s)", [
    { label: "live", stroke: "#1f77b4", width: 2 },
    { label: "comparison", stroke: "#888", ...cmpStyle },
  ], "req/s"),
  latency: chart("chart-latency", "End-to-end latency (ms)", [
    { label: "p50", stroke: "#2ca02c", width: 2 },
    { label: "p95", stroke: "#ff7f0e", width: 2 },
    { label: "p99", stroke: "#d62728", width: 2 },
    { label: "comparison p95", stroke: "#888", ...cmpStyle },
  ], "ms"),
  miss: chart("chart-miss", "Deadline-miss rate", [
    { label: "live", stroke: "#9467bd", width: 2 },
    { label: "comparison", stroke: "#888", ...cmpStyle },
  ], "share"),
};

// Live and comparison points on one x axis: seconds since each run's first result. The
// server keeps the last 600 live points; the comparison shows where it overlaps them.
function aligned(live, cmp, pick) {
  const first = (pts) => (pts.length ? pts[0].t : 0);
  const last = (pts) => (pts.length ? pts[pts.length - 1].t : -1);
  const lo = live.length ? first(live) : first(cmp);
  const hi = Math.max(last(live), last(cmp));
  const n = Math.max(0, hi - lo + 1);
  const x = Array.from({ length: n }, (_, i) => lo + i);
  const at = (pts, f) => {
    const out = new Array(n).fill(null);
    for (const p of pts) if (p.t >= lo && p.t <= hi) out[p.t - lo] = f(p) ?? null;
    return out;
  };
  return [x, ...pick.map(([which, f]) => at(which === "cmp" ? cmp : live, f))];
}

function fmt(v, digits = 1) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
}

function row(d) {
  let tr = document.querySelector(`tr[data-device="${CSS.escape(d.id)}"]`);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.device = d.id;
    tr.innerHTML = `<td class="id"></td><td class="split"></td><td class="codec"></td>
      <td class="link"></td><td class="rtt"></td><td class="deadline"></td><td class="latency"></td>
      <td class="finished"></td><td class="missed"></td>
      <td><input class="mbit" type="number" step="any"></td>
      <td><input class="rtt-in" type="number" step="any"></td>
      <td><input class="deadline-in" type="number" step="any"></td>
      <td><input class="loss-in" type="number" step="any"></td>
      <td><button class="apply">apply</button></td>`;
    tr.querySelector(".id").textContent = d.id;
    tr.querySelector(".apply").addEventListener("click", () => applyRow(tr));
    $("devices").querySelector("tbody").appendChild(tr);
  }
  const set = (cls, v) => { tr.querySelector(cls).textContent = v; };
  set(".id", d.id + (d.connected ? "" : " (gone)"));
  set(".split", d.split ?? "-");
  set(".codec", d.codec ?? "-");
  set(".link", fmt(d.link_mbit));
  set(".rtt", fmt(d.rtt_ms));
  set(".deadline", fmt(d.deadline_ms, 0));
  set(".latency", fmt(d.latency_ms));
  set(".finished", d.finished);
  set(".missed", d.missed);
}

function draw(board) {
  window.collabBoard = board;
  window.collabEvents += 1;
  const live = board.live.points;
  const cmp = board.comparison ? board.comparison.points : [];
  $("cmp-label").textContent = board.comparison ? board.comparison.label : "none yet";
  charts.throughput.setData(aligned(live, cmp, [["live", (p) => p.throughput], ["cmp", (p) => p.throughput]]));
  charts.latency.setData(aligned(live, cmp, [
    ["live", (p) => p.p50], ["live", (p) => p.p95], ["live", (p) => p.p99], ["cmp", (p) => p.p95]]));
  charts.miss.setData(aligned(live, cmp, [["live", (p) => p.miss_rate], ["cmp", (p) => p.miss_rate]]));
  for (const d of board.devices) row(d);
  $("in-flight").textContent = board.in_flight;
  $("capacity").textContent = board.capacity;
  $("queues").innerHTML = board.queues.map((q, k) => `<span title="split ${k}">${k}:${q}</span>`).join("");
  const b = board.batches;
  $("batch-mean").textContent = b.length ? fmt(b.reduce((a, x) => a + x, 0) / b.length) : "-";
  $("batch-last").textContent = b.length ? b.slice(-8).join(" ") : "-";
}

function message(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "err";
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Authorization": "Bearer " + $("token").value },
    body: JSON.stringify(body),
  });
  const answer = await r.json().catch(() => ({ error: r.statusText }));
  if (r.ok) {
    message(`applied to ${answer.device} (${answer.reached} session(s))`, true);
  } else {
    message(`refused (${r.status}): ${answer.error}`, false);
  }
  return r.status;
}

function num(input) {
  const v = input.value.trim();
  return v === "" ? undefined : Number(v);
}

function applyRow(tr) {
  const body = { device: tr.dataset.device };
  const mbit = num(tr.querySelector(".mbit"));
  const rtt = num(tr.querySelector(".rtt-in"));
  if (mbit !== undefined || rtt !== undefined) {
    // The other half of the link: the one the operator set last, else the measured RTT;
    // a bandwidth must be typed (a measured one is not a setting).
    const board = window.collabBoard;
    const d = board && board.devices.find((x) => x.id === tr.dataset.device);
    const set = d && d.settings && d.settings.link;
    const m = mbit ?? (set ? set.mbit : undefined);
    const r = rtt ?? (set ? set.rtt_ms : (d && d.rtt_ms != null ? Math.round(d.rtt_ms) : undefined));
    if (m !== undefined) body.mbit = m;
    if (r !== undefined) body.rtt_ms = r;
  }
  const deadline = num(tr.querySelector(".deadline-in"));
  if (deadline !== undefined) body.deadline_ms = deadline;
  const loss = num(tr.querySelector(".loss-in"));
  if (loss !== undefined) body.max_loss = loss;
  return post("/api/settings", body);
}

$("apply-all").addEventListener("click", () => {
  const body = { device: "*" };
  const deadline = num($("all-deadline"));
  if (deadline !== undefined) body.deadline_ms = deadline;
  const loss = num($("all-loss"));
  if (loss !== undefined) body.max_loss = loss;
  const mbit = num($("all-mbit"));
  const rtt = num($("all-rtt"));
  if (mbit !== undefined || rtt !== undefined) {
    // The server names what is missing if only one of the pair is given.
    if (mbit !== undefined) body.mbit = mbit;
    if (rtt !== undefined) body.rtt_ms = rtt;
  }
  post("/api/settings", body);
});
$("apply-load").addEventListener("click", () => {
  post("/api/settings", { device: "load-generator", rate: num($("load-rate")) });
});

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("board", (e) => {
    $("status").textContent = "live";
    draw(JSON.parse(e.data));
  });
  events.onerror = () => {
    $("status").textContent = "reconnecting...";
    // A refused stream (503: too many open) is not retried by the browser itself.
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  };
}
connect();
