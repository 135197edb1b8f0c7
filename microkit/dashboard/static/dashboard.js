// The dashboard page: polls /__microkit/dashboard.json and fills the tables (text only, never HTML).
"use strict";
const POLL_MS = 1000;

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(id, items, render) {
  const body = document.querySelector(`#${id} tbody`);
  const rows = items.map((item) => { const tr = document.createElement("tr"); render(tr, item); return tr; });
  body.replaceChildren(...rows);
}

function age(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

function show(data) {
  document.getElementById("project").textContent = data.project;
  const gateways = data.gateways.map((g) => `${g.host} (pid ${g.pid})`).join(", ");
  document.getElementById("summary").textContent =
    `${data.services.length} services · gateways: ${gateways || "this one"} · registry age ${data.registry_age} s · ` +
    `refusals: ${data.refusals.auth} auth, ${data.refusals.ratelimit} rate limit`;
  fill("services", data.services, (tr, s) => {
    tr.dataset.service = s.name;
    cell(tr, s.name);
    cell(tr, s.route);
    cell(tr, s.state, `state ${s.state}`);
    cell(tr, `${s.instances.filter((i) => i.healthy).length}/${s.instances.length}`, "num");
    cell(tr, s.workers.map((w) => `${w.name} ${w.state}`).join(", ") || "–");
    cell(tr, s.restarts, "num");
    cell(tr, s.blocked_kills, "num");
  });
  const fatal = document.getElementById("fatal");
  fatal.replaceChildren(...data.services.filter((s) => s.state === "FATAL").map((s) => {
    const div = document.createElement("div");
    div.className = "fatal";
    div.textContent = `${s.name} is FATAL: ${s.error || "it does not boot"}`;
    return div;
  }));
  fill("routes", data.routes, (tr, r) => {
    tr.dataset.route = r.route;
    cell(tr, r.route);
    cell(tr, r.service);
    cell(tr, r.rps.toFixed(1), "num rps");
    cell(tr, r.requests, "num requests");
    cell(tr, `${(r.error_rate * 100).toFixed(1)} %`, "num");
    cell(tr, r.p50_ms, "num");
    cell(tr, r.p99_ms, "num");
    cell(tr, r.auth_refusals, "num");
    cell(tr, r.ratelimit_refusals, "num");
  });
  const instances = data.services.flatMap((s) => s.instances.map((i) => ({ service: s.name, ...i })));
  fill("instances", instances, (tr, i) => {
    cell(tr, i.service);
    cell(tr, i.hostname);
    cell(tr, `${i.host}:${i.port}`, "mono");
    cell(tr, i.pid, "num");
    cell(tr, age(i.age), "num");
    cell(tr, i.healthy ? "healthy" : "ejected", `state ${i.healthy ? "healthy" : "down"}`);
  });
  fill("recent", data.recent, (tr, e) => {
    cell(tr, new Date(e.time * 1000).toLocaleTimeString());
    cell(tr, e.host);
    cell(tr, e.route);
    cell(tr, e.method);
    cell(tr, e.status, "num");
    cell(tr, e.request_id, "mono");
    cell(tr, e.trace_id, "mono");
  });
  document.body.dataset.updated = String(data.time);
}

async function poll() {
  try {
    const reply = await fetch("/__microkit/dashboard.json", { credentials: "same-origin", cache: "no-store" });
    if (reply.status === 401) { window.location.assign("/__microkit/"); return; }
    if (reply.ok) show(await reply.json());
  } catch (err) {
    document.getElementById("summary").textContent = `gateway unreachable: ${err}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
