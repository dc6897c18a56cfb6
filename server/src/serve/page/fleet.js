// The fleet page: asks for the operator token once, keeps it in localStorage, and
// polls GET /v1/fleet and GET /v1/agents with it. Every value from the server is
// inserted with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "ferry-operator-token";
const POLL_MS = 3000;
let timer = null;

const $ = (id) => document.getElementById(id);

function token() {
  try { return localStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
}

function status(text, error) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(error));
}

function askToken(message) {
  clearTimeout(timer);
  try { localStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage off */ }
  $("fleet").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  status(message ? "token refused" : "sign in with the operator token");
  $("token").focus();
}

class Unauthorized extends Error {}

async function getJson(path) {
  const r = await fetch(path, {
    headers: { "Authorization": "Bearer " + token(), "Accept": "application/json" },
    cache: "no-store",
  });
  if (r.status === 401) throw new Unauthorized();
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function bytes(n) {
  n = Number(n) || 0;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
}

function ms(n) {
  n = Number(n) || 0;
  return n < 1000 ? n + " ms" : (n / 1000).toFixed(1) + " s";
}

function when(unix) {
  if (!unix) return "never";
  return new Date(unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// Sets a [data-field] element's text and its raw value (for tests and scripts).
function field(root, name, text, value) {
  const e = root.querySelector('[data-field="' + name + '"]');
  e.textContent = text === null || text === undefined ? "" : String(text);
  e.dataset.value = String(value === undefined ? text : value);
  return e;
}

function numCell(value, bad) {
  const td = el("td", value, { "class": "num" });
  if (value > 0) td.classList.add("nonzero");
  if (bad) td.classList.add("bad");
  return td;
}

function fillTable(section, cls, rows, makeRow) {
  const body = section.querySelector("table." + cls + " tbody");
  body.replaceChildren(...rows.map(makeRow));
  section.querySelector("table." + cls).hidden = rows.length === 0;
  section.querySelector("." + cls + "-empty").hidden = rows.length > 0;
}

function renderChannel(c, agents) {
  const section = $("channel-template").content.firstElementChild.cloneNode(true);
  section.dataset.channel = c.channel;
  field(section, "channel", c.channel);

  const ro = c.rollout || {};
  field(section, "rollout-release", ro.release || "none");
  const percent = Number(ro.percent) || 0;
  field(section, "rollout-percent", percent);
  section.querySelector('[data-field="rollout-halted"]').hidden = !ro.halted;
  section.querySelector('[data-field="rollout-paused"]').hidden = !ro.paused;
  field(section, "halt-reason", ro.halt_reason || "");
  const bar = section.querySelector('[data-field="rollout-bar"]');
  bar.dataset.value = String(percent);
  bar.firstElementChild.style.width = Math.min(100, Math.max(0, percent)) + "%";

  field(section, "bytes-downloaded", bytes(c.bytes_downloaded), c.bytes_downloaded);
  field(section, "bytes-full", bytes(c.bytes_full), c.bytes_full);
  field(section, "bytes-saved", bytes(c.bytes_saved), c.bytes_saved);
  field(section, "updates-succeeded", c.updates_succeeded);
  field(section, "updates-failed", c.updates_failed);
  const ud = c.update_duration_ms || {}, rd = c.rollback_duration_ms || {};
  field(section, "update-duration", ms(ud.median) + " / " + ms(ud.p95), ud.count || 0);
  field(section, "rollback-duration", ms(rd.median) + " / " + ms(rd.p95), rd.count || 0);

  const releases = c.releases || [];
  const onChannel = releases.reduce((n, r) => n + (Number(r.agents) || 0), 0);
  fillReleases(section, releases, onChannel);

  // Agents by state, from /v1/agents (offline counted on its own).
  const counts = new Map();
  for (const a of agents.filter((a) => a.channel === c.channel)) {
    const state = a.offline ? "offline" : a.state;
    counts.set(state, (counts.get(state) || 0) + 1);
  }
  const states = section.querySelector(".states");
  states.replaceChildren(...[...counts.entries()].sort().map(([state, n]) => {
    const li = el("li", state, { "class": "state-" + state, "data-state": state, "data-count": n });
    li.appendChild(el("span", n, { "class": "count" }));
    return li;
  }));

  const problems = (c.failures || []).slice()
    .concat((c.refusals || []).map((r) => ({ ...r, state: "refused", error: r.reason })));
  problems.sort((a, b) => (b.time || 0) - (a.time || 0));
  fillTable(section, "failures", problems, (f) => {
    const tr = el("tr", null, { "class": "failure", "data-agent": f.agent_id, "data-state": f.state });
    tr.append(el("td", f.agent_id), el("td", f.hostname), el("td", f.release),
      el("td", f.state), el("td", f.error || "", { "class": "error" }), el("td", when(f.time)));
    return tr;
  });
  fillTable(section, "offline", c.offline || [], (o) => {
    const tr = el("tr", null, { "data-agent": o.agent_id });
    tr.append(el("td", o.agent_id), el("td", o.hostname), el("td", when(o.last_seen)));
    return tr;
  });
  return section;
}

function fillReleases(section, releases, onChannel) {
  const body = section.querySelector("table.releases tbody");
  body.replaceChildren(...releases.map((r) => {
    const tr = el("tr", null, { "data-release": r.version });
    tr.append(el("td", r.version));
    const cells = [["agents", false], ["updating", false], ["staged", false], ["failed", true],
      ["rolled_back", true], ["refused", true], ["offline", true]];
    const tdAgents = numCell(r.agents, false);
    tdAgents.dataset.field = "agents";
    tr.append(tdAgents);
    const barCell = el("td");
    const bar = el("div", null, { "class": "bar", "data-field": "share" });
    const fill = el("div", null, { "class": "fill" });
    const share = onChannel ? Math.round((100 * (Number(r.agents) || 0)) / onChannel) : 0;
    fill.style.width = share + "%";
    bar.dataset.value = String(share);
    bar.title = share + "% of the channel's agents";
    bar.appendChild(fill);
    barCell.appendChild(bar);
    tr.append(barCell);
    for (const [name, bad] of cells.slice(1)) {
      const td = numCell(Number(r[name]) || 0, bad);
      td.dataset.field = name;
      tr.append(td);
    }
    return tr;
  }));
}

function setValue(id, text, value) {
  const e = $(id);
  e.textContent = String(text);
  e.dataset.value = String(value);
}

function render(fleet, agentsDoc) {
  const agents = agentsDoc.agents || [];
  const channels = fleet.channels || [];
  $("channels").replaceChildren(...channels.map((c) => renderChannel(c, agents)));
  const offline = agents.filter((a) => a.offline).length;
  const failures = channels.reduce((n, c) => n + (c.failures || []).length, 0);
  const saved = channels.reduce((n, c) => n + (Number(c.bytes_saved) || 0), 0);
  setValue("total-agents", agents.length, agents.length);
  setValue("total-offline", offline, offline);
  setValue("total-failures", failures, failures);
  setValue("total-saved", bytes(saved), saved);
  document.body.dataset.generatedAt = String(fleet.generated_at);
}

async function refresh() {
  clearTimeout(timer);
  if (!token()) return askToken();
  try {
    const [fleet, agents] = await Promise.all([getJson("/v1/fleet"), getJson("/v1/agents")]);
    render(fleet, agents);
    $("login").hidden = true;
    $("fleet").hidden = false;
    $("forget").hidden = false;
    status("updated " + when(fleet.generated_at) + " · refreshes every " + POLL_MS / 1000 + " s");
  } catch (e) {
    if (e instanceof Unauthorized) return askToken("The server refused this token; enter it again.");
    status("cannot load the fleet: " + e.message + " (retrying)", true);
  }
  timer = setTimeout(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    try {
      localStorage.setItem(TOKEN_KEY, value);
    } catch (_) {
      $("login-error").textContent = "This browser does not allow local storage.";
      return;
    }
    $("token").value = "";
    $("login").hidden = true;
    status("loading…");
    refresh();
  });
  $("forget").addEventListener("click", () => askToken());
  refresh();
});
