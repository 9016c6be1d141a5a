// The Clowder monitor: plain DOM, no build step, nothing fetched but this server's API.
// Text from the tree is only ever set as textContent, never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "clowder-token";
const NODE_W = 168, NODE_H = 46, GAP_X = 56, GAP_Y = 18, PAD = 16;

const view = {
  pipeline: null, job: null, attempt: null,  // what the address (#/p/PIPELINE/JOB) selects
  detail: null, jobDetail: null,
  log: null, logKey: null,                   // the EventSource following a log, and which
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// -- the token: given once in the address (?token=...), kept for this tab only -------------------

(function takeToken() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

function toast(text, bad = false) {
  const t = $("toast");
  t.textContent = text;
  t.className = bad ? "show bad" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 4000);
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : `${r.status} ${r.statusText}`);
  return body;
}

async function act(url, what, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    toast("no token: open the address that `clowder serve` printed (it ends in ?token=…)", true);
    return;
  }
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await r.json().catch(() => ({}));
  if (r.ok) toast(`${what} requested`);
  else toast(`${what} refused: ${answer.detail || r.status}`, true);
  // A request (or a refusal) changes which actions apply: the server says which, ask again.
  soon(loadPipeline);
  soon(loadJob);
}

// Only the actions the server says apply to the state shown (a retry of a failed or cancelled
// job, a cancel of what has not ended); it refuses the others with 409 anyway.
function showActions(actions) {
  for (const [id, action] of Object.entries(actions.buttons)) $(id).hidden = !actions.allowed.includes(action);
}

// -- formatting -----------------------------------------------------------------------------------

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
  if (m < 60) return `${m}m${String(s).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

const short = (sha) => (sha ? sha.slice(0, 10) : "–");
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");
const badge = (state) => el("span", { class: `state s-${state}`, text: state });

function setState(node, state) {
  node.textContent = state;
  node.className = `state s-${state}`;
}

// -- pipelines list -------------------------------------------------------------------------------

async function loadPipelines() {
  const filter = $("filter").value;
  const list = await getJSON("/api/pipelines" + (filter ? `?state=${encodeURIComponent(filter)}` : ""));
  const ul = $("pipeline-list");
  ul.replaceChildren(...list.map((p) => {
    const counts = Object.entries(p.counts).map(([s, n]) => `${n} ${s}`).join(", ") || "no jobs";
    const a = el("a", { href: `#/p/${p.name}` }, el("span", { class: "name", text: p.name }), badge(p.state),
      el("div", { class: "muted small", text: counts }));
    const li = el("li", { "data-pipeline": p.name, "data-state": p.state }, a);
    if (p.name === view.pipeline) li.classList.add("selected");
    return li;
  }));
}

// -- one pipeline ---------------------------------------------------------------------------------

async function loadPipeline() {
  if (!view.pipeline) return;
  const name = view.pipeline;
  let d;
  try {
    d = await getJSON(`/api/pipelines/${encodeURIComponent(name)}`);
  } catch (e) {
    $("pipeline").hidden = true;
    $("empty").hidden = false;
    $("empty").textContent = e.message;
    return;
  }
  if (name !== view.pipeline) return;
  view.detail = d;
  $("empty").hidden = true;
  $("pipeline").hidden = false;
  $("pipeline-name").textContent = d.name;
  setState($("pipeline-state"), d.state);
  $("pipeline-message").textContent = d.message;
  showActions({ buttons: { "cancel-pipeline": "cancel" }, allowed: d.actions });
  $("prompt").textContent = d.prompt || "";
  $("problems").replaceChildren(...d.problems.map((p) => el("li", { text: p })));
  drawGraph(d);
}

function drawGraph(d) {
  const columns = [];
  for (const j of d.jobs) (columns[j.level] ||= []).push(j);
  // Order each column by the mean row of what its jobs need (barycenter): fewer crossings, and
  // an edge that skips columns tends to run along a row instead of through another job.
  const row = {};
  columns.forEach((col) => {
    const key = (j) => (j.needs.length ? j.needs.reduce((s, n) => s + (row[n] ?? 0), 0) / j.needs.length : 0);
    col.sort((a, b) => key(a) - key(b));
    col.forEach((j, y) => { row[j.name] = y; });
  });
  const pos = {};
  columns.forEach((col, x) => col.forEach((j, y) => {
    pos[j.name] = { x: PAD + x * (NODE_W + GAP_X), y: PAD + y * (NODE_H + GAP_Y) };
  }));
  const rows = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const width = PAD * 2 + columns.length * (NODE_W + GAP_X) - GAP_X;
  const height = PAD * 2 + rows * (NODE_H + GAP_Y) - GAP_Y;
  const root = svg("svg", { width: Math.max(width, 0), height, viewBox: `0 0 ${Math.max(width, 0)} ${height}`,
    role: "img", "aria-label": `job graph of ${d.name}` });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
  defs.append(marker);
  root.append(defs);
  // A fix-up's spawner runs again from the fix-up's final commit: drawn as a dotted edge.
  const fixups = d.jobs.filter((j) => j.parent).map((j) => ({ source: j.name, target: j.parent, when: "fixup" }));
  for (const e of [...d.edges, ...fixups]) {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) continue;
    // A fix-up sits left of or under its spawner: leave from whichever side faces it.
    const back = b.x <= a.x;
    const x1 = back ? a.x + NODE_W / 2 : a.x + NODE_W, y1 = back ? a.y : a.y + NODE_H / 2;
    const x2 = b.x, y2 = b.y + NODE_H / 2, mid = back ? x2 - GAP_X / 2 : (x1 + x2) / 2;
    const path = svg("path", { d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
      class: `edge when-${e.when}`, "marker-end": "url(#arrow)" });
    const title = svg("title");
    title.textContent = e.when === "fixup" ? `${e.source} is a fix-up spawned by ${e.target}`
      : `${e.target} needs ${e.source} (${e.when})`;
    path.append(title);
    root.append(path);
  }
  for (const j of d.jobs) {
    const p = pos[j.name];
    // Outdated is a mark beside the state (its inputs changed since it ran), never a state.
    const g = svg("g", { class: `node s-${j.state}${j.outdated ? " outdated" : ""}${j.name === view.job ? " selected" : ""}`,
      transform: `translate(${p.x} ${p.y})`, "data-job": j.name, "data-state": j.state, tabindex: 0 });
    g.append(svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }));
    const name = svg("text", { x: 10, y: 19, class: "label" });
    name.textContent = j.name.length > 22 ? j.name.slice(0, 21) + "…" : j.name;
    const sub = svg("text", { x: 10, y: 36, class: "sub" });
    sub.textContent = [j.state, j.outdated ? "outdated" : "", j.attempt ? `#${j.attempt}` : "",
      duration(j.duration)].filter(Boolean).join(" · ");
    const title = svg("title");
    title.textContent = `${j.name}: ${j.state}${j.outdated ? " — " + j.outdated.reason : ""}${j.message ? " — " + j.message : ""}`;
    g.append(name, sub, title);
    const open = () => { location.hash = `#/p/${d.name}/${j.name}`; };
    g.addEventListener("click", open);
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
    root.append(g);
  }
  $("graph").replaceChildren(root);
}

// -- one job --------------------------------------------------------------------------------------

// Why the job ran, waits or was skipped, as `clowder why` says it.
async function loadWhy(p, j) {
  let text = "";
  try {
    text = (await getJSON(`/api/pipelines/${encodeURIComponent(p)}/jobs/${encodeURIComponent(j)}/why`)).reason;
  } catch (e) {
    text = "";
  }
  if (p === view.pipeline && j === view.job) $("job-why").textContent = text ? `why: ${text}` : "";
}

async function loadJob() {
  if (!view.pipeline || !view.job) {
    $("job").hidden = true;
    followLog(null);
    return;
  }
  const [p, j] = [view.pipeline, view.job];
  let d;
  try {
    d = await getJSON(`/api/pipelines/${encodeURIComponent(p)}/jobs/${encodeURIComponent(j)}`);
  } catch (e) {
    toast(e.message, true);
    $("job").hidden = true;
    return;
  }
  if (p !== view.pipeline || j !== view.job) return;
  view.jobDetail = d;
  $("job").hidden = false;
  $("job-name").textContent = d.name;
  setState($("job-state"), d.state);
  $("job-message").textContent = [d.outdated ? d.outdated.reason : "", d.message].filter(Boolean).join("; ");
  showActions({ buttons: { "cancel-job": "cancel", "retry-job": "retry", "approve-job": "approve",
    "reject-job": "reject", "rerun-job": "rerun", "rerun-downstream": "rerun" }, allowed: d.actions });
  drawLineage(d);
  loadWhy(p, j);
  drawAttempts(d);
  drawArtifacts(d);
  drawExport(d);
  const select = $("log-attempt");
  const latest = d.attempt;
  select.replaceChildren(...d.attempts.map((a) =>
    el("option", { value: a.number, text: `attempt ${a.number} (${a.state})` })));
  const chosen = view.attempt && view.attempt <= latest ? view.attempt : latest;
  select.value = chosen || "";
  followLog(chosen ? { pipeline: p, job: j, attempt: chosen } : null);
}

function drawLineage(d) {
  const box = $("lineage");
  const parts = [];
  if (d.regression) {
    const r = d.regression, ctx = r.context || {};
    parts.push(el("p", {},
      "Fix-up of ", jobLink(d.pipeline, r.of), " spawned by ", jobLink(d.pipeline, r.parent),
      ctx.attempt ? ` (attempt ${ctx.attempt})` : "", ctx.reason ? `: ${ctx.reason}` : ""));
    if (ctx.context) parts.push(el("pre", { class: "context", text: String(ctx.context) }));
  }
  if (d.spawned.length) {
    const p = el("p", {}, "Spawned fix-ups: ");
    d.spawned.forEach((s, i) => p.append(i ? ", " : "", jobLink(d.pipeline, s)));
    if (d.waiting_for.length) p.append(` — waiting for ${d.waiting_for.join(", ")}`);
    parts.push(p);
  }
  const diffs = regressionDiffs(d);
  if (diffs.length) {
    const ul = el("ul", { class: "diffs" });
    for (const x of diffs) {
      const command = ["clowder diff", d.pipeline, x.a, x.b].filter(Boolean).join(" ");
      const out = el("pre", { class: "diff", hidden: "" });
      const button = el("button", { type: "button", class: "show-diff", "data-a": x.a, "data-b": x.b || "",
        text: "show diff" });
      button.addEventListener("click", () => toggleDiff(d.pipeline, x, button, out));
      ul.append(el("li", {}, el("span", { text: x.label }), " ", el("code", { text: `${short(x.from)}..${short(x.to)}` }),
        " ", button, " ", el("code", { class: "muted", text: command }), out));
    }
    parts.push(el("h4", { text: "Changes between attempts" }), ul);
  }
  box.replaceChildren(...parts);
}

async function toggleDiff(pipeline, x, button, out) {
  if (!out.hidden) {
    out.hidden = true;
    button.textContent = "show diff";
    return;
  }
  const query = new URLSearchParams({ a: x.a, ...(x.b ? { b: x.b } : {}) });
  const r = await fetch(`/api/pipelines/${encodeURIComponent(pipeline)}/diff?${query}`);
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    toast(`no diff: ${body.detail || r.status}`, true);
    return;
  }
  const text = await r.text();
  out.replaceChildren(...(text ? text.split("\n") : ["(no changes)"]).map((line) => {
    const kind = /^(diff|index|new|deleted|similarity|rename|---|\+\+\+) /.test(line) ? "meta"
      : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "";
    return el("span", { class: kind, text: line + "\n" });
  }));
  out.hidden = false;
  button.textContent = "hide diff";
}

// The attempt that ran after a fix-up started from the fix-up's commit: each pair of attempts
// whose base is not the previous attempt's commit is a step of the regression loop.
function regressionDiffs(d) {
  const out = [];
  for (let i = 1; i < d.attempts.length; i++) {
    const prev = d.attempts[i - 1], a = d.attempts[i];
    if (!prev.commit || !a.commit) continue;
    out.push({ label: `attempt ${prev.number} → ${a.number}${a.trigger === "regression" ? " (after fix-up)" : ""}`,
      from: prev.commit, to: a.commit, a: `${d.name}@${prev.number}`, b: `${d.name}@${a.number}` });
  }
  if (d.regression && d.attempts.length) {
    const last = d.attempts[d.attempts.length - 1], first = d.attempts[0];
    if (first.base_commit && last.commit) {
      out.push({ label: `what fix-up ${d.name} changed in the code ${d.regression.parent || ""} tested`,
        from: first.base_commit, to: last.commit, a: d.name, b: null });
    }
  }
  return out;
}

function jobLink(pipeline, job) {
  return job ? el("a", { href: `#/p/${pipeline}/${job}`, text: job }) : "?";
}

function drawAttempts(d) {
  $("attempts").tBodies[0].replaceChildren(...d.attempts.map((a) => {
    const consumed = Object.entries(a.consumed).map(([job, c]) => `${job}@${short(c)}`).join(", ");
    return el("tr", { "data-attempt": a.number },
      el("td", { text: a.number }), el("td", {}, badge(a.state)), el("td", { text: a.reused_from ? `${a.trigger}, reused #${a.reused_from}` : a.trigger }),
      el("td", { text: time(a.started_at) }), el("td", { text: duration(a.duration) }),
      el("td", { text: a.exit_code ?? (a.signal ? `signal ${a.signal}` : "") }),
      el("td", {}, el("code", { text: `${short(a.base_commit)} → ${short(a.commit)}` })),
      el("td", {}, el("code", { text: consumed })));
  }));
  const consumers = d.consumers.map((c) => `${c.job} (attempt ${c.attempt}) from ${short(c.commit)}`);
  $("consumers").textContent = consumers.length ? `Consumed by: ${consumers.join("; ")}` : "";
}

function drawExport(d) {
  $("export").hidden = !d.export_command;
  $("export-command").textContent = d.export_command || "";
}

function drawArtifacts(d) {
  const rows = [];
  for (const a of d.attempts) {
    for (const x of a.artifacts) {
      rows.push(el("tr", {}, el("td", { text: a.number }), el("td", { text: x.kind }),
        el("td", {}, el("code", { text: x.path })), el("td", { text: x.size }),
        el("td", {}, el("code", { title: x.blob, text: short(x.blob) }))));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "none recorded" })));
  $("artifacts").tBodies[0].replaceChildren(...rows);
}

// -- following a log ------------------------------------------------------------------------------

function followLog(target) {
  const key = target ? `${target.pipeline}/${target.job}/${target.attempt}` : null;
  if (key === view.logKey) return;
  if (view.log) view.log.close();
  view.log = null;
  view.logKey = key;
  const pre = $("log");
  pre.textContent = "";
  $("log-state").textContent = "";
  if (!target) return;
  const url = `/api/pipelines/${encodeURIComponent(target.pipeline)}/jobs/${encodeURIComponent(target.job)}` +
    `/logs?attempt=${target.attempt}&follow=true`;
  const source = new EventSource(url);
  view.log = source;
  $("log-state").textContent = "following…";
  source.addEventListener("log", (ev) => {
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(JSON.parse(ev.data).text);
    if (stick) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", () => {
    source.close();
    if (view.log === source) $("log-state").textContent = "ended";
  });
  source.onerror = () => {
    // A 404 (no log yet) closes the source; a dropped connection reconnects by itself.
    if (source.readyState === EventSource.CLOSED && view.log === source) $("log-state").textContent = "no log";
  };
}

// -- live updates ---------------------------------------------------------------------------------

// A burst of events becomes one refetch: one fetch of each kind in flight, at most one queued
// behind it, and at least MIN_GAP ms between fetches, so a busy pipeline does not flood the server.
const MIN_GAP = 250;
const fetches = new Map();  // fn -> { busy, again, last }
function soon(fn) {
  const f = fetches.get(fn) || { busy: false, again: false, last: 0 };
  fetches.set(fn, f);
  if (f.busy) { f.again = true; return; }
  f.busy = true;
  setTimeout(async () => {
    f.last = Date.now();
    try { await fn(); } catch (e) { toast(e.message, true); }
    f.busy = false;
    if (f.again) { f.again = false; soon(fn); }
  }, Math.max(60, f.last + MIN_GAP - Date.now()));
}

function refreshAll() {
  soon(loadPipelines);
  soon(loadPipeline);
  soon(loadJob);
}

function listen() {
  const events = new EventSource("/api/events");
  const live = $("live");
  events.onopen = () => { live.textContent = "live"; live.className = "live on"; refreshAll(); };
  events.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  events.addEventListener("resync", refreshAll);
  events.addEventListener("pipeline", (ev) => {
    const c = JSON.parse(ev.data);
    soon(loadPipelines);
    if (c.pipeline === view.pipeline) soon(loadPipeline);
  });
  events.addEventListener("job", (ev) => {
    const c = JSON.parse(ev.data);
    if (c.pipeline !== view.pipeline) return soon(loadPipelines);
    soon(loadPipeline);
    if (c.job === view.job) soon(loadJob);
  });
}

// -- navigation -----------------------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/p\/([^/]+)(?:\/([^/]+))?/);
  const [pipeline, job] = m ? [decodeURIComponent(m[1]), m[2] ? decodeURIComponent(m[2]) : null] : [null, null];
  if (pipeline !== view.pipeline) view.detail = null;
  if (job !== view.job) view.attempt = null;
  view.pipeline = pipeline;
  view.job = job;
  for (const li of document.querySelectorAll("#pipeline-list li")) {
    li.classList.toggle("selected", li.dataset.pipeline === pipeline);
  }
  if (!pipeline) {
    $("pipeline").hidden = true;
    $("empty").hidden = false;
    $("empty").textContent = "Choose a pipeline.";
    followLog(null);
    return;
  }
  refreshAll();
}

function init() {
  getJSON("/api/info").then((i) => { $("root").textContent = i.root; }).catch(() => {});
  $("filter").addEventListener("change", () => soon(loadPipelines));
  $("cancel-pipeline").addEventListener("click", () => {
    if (view.pipeline) act(`/api/pipelines/${encodeURIComponent(view.pipeline)}/cancel`, `cancel of ${view.pipeline}`);
  });
  const jobAction = (action) => () => {
    if (view.pipeline && view.job) {
      act(`/api/pipelines/${encodeURIComponent(view.pipeline)}/jobs/${encodeURIComponent(view.job)}/${action}`,
        `${action} of ${view.job}`);
    }
  };
  $("cancel-job").addEventListener("click", jobAction("cancel"));
  $("retry-job").addEventListener("click", jobAction("retry"));
  // A gate's decision carries a comment (a rejection's is the job's message): asked for, optional.
  const decide = (action) => () => {
    if (!view.pipeline || !view.job) return;
    const comment = window.prompt(`${action} ${view.job}: a comment (optional)`, "");
    if (comment === null) return;  // the dialog was cancelled: no decision
    act(`/api/pipelines/${encodeURIComponent(view.pipeline)}/jobs/${encodeURIComponent(view.job)}/${action}`,
      `${action} of ${view.job}`, { comment });
  };
  $("approve-job").addEventListener("click", decide("approve"));
  $("reject-job").addEventListener("click", decide("reject"));
  $("rerun-job").addEventListener("click", jobAction("rerun"));
  $("rerun-downstream").addEventListener("click", () => {
    if (view.pipeline && view.job) {
      act(`/api/pipelines/${encodeURIComponent(view.pipeline)}/jobs/${encodeURIComponent(view.job)}/rerun?downstream=true`,
        `re-run of ${view.job} and what follows it`);
    }
  });
  $("copy-export").addEventListener("click", async () => {
    const text = $("export-command").textContent;
    try {
      await navigator.clipboard.writeText(text);
      toast(`copied: ${text}`);
    } catch (e) {  // no clipboard (plain http to another host): select it for Ctrl-C instead
      getSelection().selectAllChildren($("export-command"));
    }
  });
  $("log-attempt").addEventListener("change", (ev) => {
    view.attempt = Number(ev.target.value) || null;
    if (view.attempt) followLog({ pipeline: view.pipeline, job: view.job, attempt: view.attempt });
  });
  window.addEventListener("hashchange", route);
  route();
  loadPipelines().catch((e) => toast(e.message, true));
  listen();
}

document.addEventListener("DOMContentLoaded", init);
