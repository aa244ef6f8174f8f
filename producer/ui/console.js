// orderstream console: polls the producer's read-only API every REFRESH_MS and renders it;
// actions call the admin routes with the token the operator typed (kept for this tab only).
// Every value from the API is written with textContent: dead letters carry hostile data.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "orderstream-admin-token";
let previous = null; // the last /stream/info answer and when it came, for the rates

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  return node;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function say(text, kind = "ok") {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = kind;
}

async function getJson(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`GET ${path}: ${resp.status}`);
  return resp.json();
}

async function act(method, path, what) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(path, { method, headers });
  let body = {};
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (resp.status === 401) {
    say(`${what}: refused (401, ${body.error || "admin token required"}); enter the admin token above`, "error");
    document.getElementById("token").focus();
    return null;
  }
  if (!resp.ok) {
    say(`${what}: ${resp.status} ${body.error || ""}`, "error");
    return null;
  }
  say(`${what}: done`, "ok");
  refresh();
  return body;
}

function renderRates(info, at) {
  const group = (info.groups || []).find((g) => g.name === info.group);
  const now = { at, added: info.entriesAdded, dlq: info.deadLetters.length, failed: info.failedDeliveries,
                acked: group && group.entriesRead !== null ? group.entriesRead - group.pending : null };
  if (previous && at > previous.at) {
    const secs = (at - previous.at) / 1000;
    const rate = (a, b) => (a === null || b === null || a === undefined || b === undefined) ? "–"
      : Math.max((a - b) / secs, 0).toFixed(1);
    document.getElementById("rate-accepted").textContent = rate(now.added, previous.added);
    document.getElementById("rate-processed").textContent = rate(now.acked, previous.acked);
    document.getElementById("rate-failed").textContent = rate(now.failed, previous.failed);
    document.getElementById("rate-dead").textContent = rate(now.dlq, previous.dlq);
  }
  previous = now;
}

function renderGroups(info) {
  const body = document.querySelector("#groups tbody");
  const consumers = document.getElementById("consumers");
  body.replaceChildren();
  consumers.replaceChildren();
  if (!info.groups.length) {
    body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" },
      info.exists ? `no consumer group (configured: ${info.group}, ${info.groupState})` : "the stream does not exist yet")));
  }
  for (const g of info.groups) {
    const name = g.name ?? `base64:${g.nameBase64}`;
    const state = g.paused ? "paused" : g.state;
    const toggle = g.paused
      ? el("button", { class: "resume", onclick: () => act("POST", `/groups/${encodeURIComponent(name)}/resume`, `resume ${name}`) }, "Resume")
      : el("button", { class: "pause", onclick: () => act("POST", `/groups/${encodeURIComponent(name)}/pause`, `pause ${name}`) }, "Pause");
    body.append(el("tr", { "data-group": name },
      el("td", {}, name), el("td", { class: `state-${state}` }, state),
      el("td", { class: "num" }, g.lag ?? "?"), el("td", { class: "num" }, g.pending),
      el("td", { class: "num" }, duration(g.oldestPendingAgeMs)), el("td", { class: "num" }, g.consumerCount),
      el("td", {}, toggle)));
    const rows = g.consumers.map((c) => el("tr", { "data-consumer": c.name ?? "" },
      el("td", {}, c.name ?? `base64:${c.nameBase64}`), el("td", { class: "num" }, c.pending),
      el("td", { class: "num" }, duration(c.idleMs)), el("td", { class: "num" }, duration(c.inactiveMs))));
    consumers.append(el("h3", {}, `Consumers of ${name}`),
      el("table", { class: "consumers", "data-group": name },
        el("thead", {}, el("tr", {}, el("th", {}, "consumer"), el("th", {}, "pending"), el("th", {}, "idle"),
          el("th", {}, "inactive"))),
        el("tbody", {}, ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "none"))]))));
  }
}

function renderDeadLetters(page) {
  const body = document.querySelector("#dead-letters tbody");
  const checked = new Set([...body.querySelectorAll("input:checked")].map((box) => box.value));
  body.replaceChildren();
  document.getElementById("dlq-count").textContent = `(${page.length} in ${page.stream})`;
  for (const d of page.deadLetters) {
    body.append(el("tr", { "data-dlq-id": d.dlqId },
      el("td", {}, Object.assign(el("input", { type: "checkbox", value: d.dlqId }), { checked: checked.has(d.dlqId) })),
      el("td", {}, d.dlqId), el("td", {}, d.orderId ?? "–"), el("td", {}, d.reason ?? "–"),
      el("td", { class: "num" }, d.deliveries ?? "–"), el("td", { class: "error-text" }, d.lastError ?? ""),
      el("td", {}, d.deadLetteredMs ? new Date(d.deadLetteredMs).toLocaleString() : "–"),
      el("td", {},
        el("button", { class: "redrive", onclick: () => act("POST", `/dead-letters/${d.dlqId}/redrive`, `re-drive ${d.dlqId}`) }, "Re-drive"),
        " ",
        el("button", { class: "delete", onclick: () => confirm(`Delete dead letter ${d.dlqId}? The order is given up.`)
          && act("DELETE", `/dead-letters/${d.dlqId}`, `delete ${d.dlqId}`) }, "Delete"))));
  }
  if (!page.deadLetters.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "none")));
}

function renderAudit(audit) {
  const body = document.querySelector("#audit tbody");
  body.replaceChildren(...audit.entries.map((e) => el("tr", {},
    el("td", {}, e.atMs ? new Date(e.atMs).toLocaleString() : "–"), el("td", {}, e.action ?? ""), el("td", {}, e.target ?? ""),
    el("td", { class: "num" }, e.count ?? ""), el("td", {}, `${e.actor || "?"} (${e.remote ?? ""}, ${e.auth ?? ""})`))));
}

function renderDecisions(found) {
  const body = document.querySelector("#decisions tbody");
  const rows = found.decisions.map((d) => el("tr", {},
    el("td", {}, d.atMs ? new Date(d.atMs).toLocaleString() : "–"), el("td", {}, `${d.autoscaler ?? ""} → ${d.target ?? ""}`),
    el("td", { class: "num" }, `${d.current ?? "?"} → ${d.desired ?? "?"}`), el("td", {}, d.outcome ?? ""),
    el("td", { class: "num" }, d.backlog ?? "?"), el("td", {}, d.message ?? "")));
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "muted" },
    "none yet (no StreamAutoscaler has scaled on this stream)"))]));
}

async function refresh() {
  try {
    const at = Date.now();
    // Each part on its own: one endpoint that fails (a key of the wrong type, say) must not
    // blank the others.
    const parts = await Promise.allSettled([getJson("/stream/info"), getJson("/dead-letters?limit=100"),
      getJson("/audit?limit=20"), getJson("/autoscaler/decisions?limit=20")]);
    const [info, dead, audit, found] = parts.map((p) => (p.status === "fulfilled" ? p.value : null));
    const failed = parts.filter((p) => p.status === "rejected").map((p) => p.reason.message);
    if (info) {
      document.getElementById("stream").textContent =
        `stream ${info.stream}: ${info.length} entries · group ${info.group}: ${info.groupState}`;
      renderRates(info, at);
      renderGroups(info);
    }
    if (dead) renderDeadLetters(dead);
    if (audit) renderAudit(audit);
    if (found) renderDecisions(found);
    if (failed.length) say(`cannot read part of the API: ${failed.join("; ")}`, "error");
    document.getElementById("refreshed").textContent = `updated ${new Date(at).toLocaleTimeString()}`;
  } catch (err) {
    say(`cannot read the API: ${err.message}`, "error");
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("token").value = "";
  say(value ? "admin token set for this tab" : "admin token cleared");
});
document.getElementById("select-all").addEventListener("change", (ev) => {
  for (const box of document.querySelectorAll("#dead-letters tbody input[type=checkbox]")) box.checked = ev.target.checked;
});
document.getElementById("redrive-selected").addEventListener("click", async () => {
  const ids = [...document.querySelectorAll("#dead-letters tbody input:checked")].map((box) => box.value);
  if (!ids.length) { say("select dead letters first", "error"); return; }
  for (const id of ids) if (!(await act("POST", `/dead-letters/${id}/redrive`, `re-drive ${id}`))) return;
  say(`re-drove ${ids.length} dead letters`);
});
document.getElementById("redrive-all").addEventListener("click", () => act("POST", "/dead-letters/redrive", "re-drive all"));
document.getElementById("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const id = document.getElementById("order-id").value.trim();
  if (!id) return;
  const resp = await fetch(`/orders/${encodeURIComponent(id)}`);
  const out = document.getElementById("order");
  out.textContent = resp.status === 404 ? `no order ${id} is known` : JSON.stringify(await resp.json(), null, 2);
});

refresh();
setInterval(refresh, REFRESH_MS);
