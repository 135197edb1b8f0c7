// The API page: the gateway's merged OpenAPI document as a table of operations.
"use strict";

async function load() {
  const reply = await fetch("/__microkit/openapi.json", { credentials: "same-origin", cache: "no-store" });
  if (!reply.ok) { window.location.assign("/__microkit/"); return; }
  const doc = await reply.json();
  const body = document.querySelector("#operations tbody");
  const rows = [];
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const tr = document.createElement("tr");
      for (const text of [method.toUpperCase(), path, (op.tags || []).join(", "), op.summary || "",
                          Object.keys(op.responses || {}).join(" ")]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      rows.push(tr);
    }
  }
  body.replaceChildren(...rows);
}

load();
