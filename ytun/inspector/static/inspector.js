// The ytun request inspector: the list of recorded requests, kept up to date by the
// server-sent events of /api/events, the details of one, and replay.
"use strict";

const rows = new Map(); // id -> summary
let selected = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function size(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function statusText(s) {
  if (s.status !== null) return String(s.status);
  return s.state === "pending" ? "…" : s.state;
}

function renderRow(s) {
  const tr = el("tr");
  tr.dataset.id = s.id;
  tr.dataset.path = s.path;
  tr.dataset.state = s.state;
  if (s.replay_of !== null) tr.dataset.replayOf = s.replay_of;
  if (s.id === selected) tr.classList.add("selected");
  tr.append(el("td", s.id));
  tr.append(el("td", s.method));
  const path = el("td", s.path, "path");
  path.title = s.path;
  if (s.replay_of !== null) path.append(el("span", "replay of #" + s.replay_of, "replay-mark"));
  tr.append(path);
  const statusClass = s.status ? "s" + String(s.status)[0] : s.state;
  tr.append(el("td", statusText(s), "status " + statusClass));
  tr.append(el("td", s.duration_ms === null ? "–" : s.duration_ms.toFixed(1) + " ms"));
  tr.append(el("td", size(s.request_size) + " / " + size(s.response_size)));
  const cell = el("td");
  const button = el("button", "Replay", "replay");
  button.type = "button";
  button.dataset.id = s.id;
  button.disabled = s.upgrade;
  button.addEventListener("click", (event) => {
    event.stopPropagation();
    replay(s.id);
  });
  cell.append(button);
  tr.append(cell);
  tr.addEventListener("click", () => show(s.id));
  return tr;
}

function render() {
  const body = $("rows");
  const ids = [...rows.keys()].sort((a, b) => b - a);
  body.replaceChildren(...ids.map((id) => renderRow(rows.get(id))));
  $("empty").hidden = ids.length > 0;
  $("count").textContent = ids.length + (ids.length === 1 ? " request" : " requests");
}

function note(text) {
  $("message").textContent = text;
}

// Live events that arrive while a snapshot is being fetched are newer than it: each load
// keeps them and applies them over the snapshot, so a slow fetch never hides them.
const loading = new Set();

async function load() {
  const live = new Map();
  loading.add(live);
  try {
    const response = await fetch("/api/requests", { cache: "no-store" });
    const data = await response.json();
    rows.clear();
    for (const s of data.requests) rows.set(s.id, s);
    for (const [id, s] of live) rows.set(id, s);
    render();
  } finally {
    loading.delete(live);
  }
}

function fillHeaders(table, headers) {
  table.replaceChildren(
    ...headers.map(([name, value]) => {
      const tr = el("tr");
      tr.append(el("td", name), el("td", value));
      return tr;
    }),
  );
}

function bodyText(body) {
  if (!body || body.size === 0) return "(no body)";
  let text = body.text !== null ? body.text : "(binary, base64) " + body.base64;
  if (body.truncated) text += "\n… (" + body.captured + " of " + body.size + " bytes captured)";
  return text;
}

async function show(id) {
  selected = id;
  for (const tr of $("rows").children) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  const response = await fetch("/api/requests/" + id, { cache: "no-store" });
  if (!response.ok) {
    note((await response.json()).error);
    return;
  }
  const d = await response.json();
  $("detail-pane").hidden = false;
  $("detail-title").textContent = "#" + d.id + " " + d.method + " " + d.path;
  $("detail-note").textContent =
    (d.replay_of !== null ? "Replay of #" + d.replay_of + ". " : "") + (d.error || "");
  $("request-line").textContent = d.request.line;
  fillHeaders($("request-headers"), d.request.headers);
  $("request-body").textContent = bodyText(d.request.body);
  if (d.response) {
    $("response-line").textContent = d.response.line;
    fillHeaders($("response-headers"), d.response.headers);
    $("response-body").textContent = bodyText(d.response.body);
  } else {
    $("response-line").textContent = "(no answer yet)";
    fillHeaders($("response-headers"), []);
    $("response-body").textContent = "";
  }
}

async function replay(id) {
  note("Replaying #" + id + "…");
  const response = await fetch("/api/requests/" + id + "/replay", { method: "POST" });
  const data = await response.json();
  if (!response.ok) {
    note("Replay of #" + id + " failed: " + data.error);
    return;
  }
  rows.set(data.id, data);
  render();
  note("Replay of #" + id + " is #" + data.id + " (" + (data.status ?? data.state) + ")");
}

function connect() {
  const events = new EventSource("/api/events");
  events.onopen = () => {
    $("live").textContent = "live";
    $("live").className = "live on";
  };
  events.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.event === "hello") {
      load(); // whatever happened while the feed was down
    } else if (data.event === "cleared") {
      for (const live of loading) live.clear();
      rows.clear();
      render();
    } else if (data.exchange) {
      for (const live of loading) live.set(data.exchange.id, data.exchange);
      rows.set(data.exchange.id, data.exchange);
      render();
      if (data.exchange.id === selected) show(selected);
    }
  };
  events.onerror = () => {
    $("live").textContent = "reconnecting…";
    $("live").className = "live off";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("clear").addEventListener("click", async () => {
    await fetch("/api/requests", { method: "DELETE" });
  });
  load();
  connect();
});
