// BigMed FHIR sandbox UI: plain DOM, no framework, no build step. Every view is ordinary API calls.
"use strict";

const BASE = location.origin + "/fhir";
const LOINC = "http://loinc.org";
const TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs";
const view = document.getElementById("view");
const tokenInput = document.getElementById("token");

tokenInput.value = sessionStorage.getItem("bigmed-token") || "";
tokenInput.addEventListener("change", () => {
  sessionStorage.setItem("bigmed-token", tokenInput.value.trim());
  route();
});
document.getElementById("base").textContent = BASE;

// -- DOM helper: text is always set as text, never as HTML -----------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.addEventListener("click", v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(method, path, body) {
  const headers = { Accept: "application/fhir+json" };
  const token = tokenInput.value.trim();
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/fhir+json";
  const resp = await fetch(path.startsWith("http") ? path : BASE + path, { method, headers, body });
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
  return { status: resp.status, headers: resp.headers, text, json };
}

async function search(path) {
  const r = await api("GET", path);
  if (r.status !== 200) throw new Error(outcomeText(r));
  return (r.json.entry || []).filter((e) => !e.search || e.search.mode !== "outcome").map((e) => e.resource);
}

function outcomeText(r) {
  const issues = (r.json && r.json.issue) || [];
  const msg = issues.map((i) => i.diagnostics || (i.details && i.details.text) || i.code).join("; ");
  return `HTTP ${r.status}${msg ? ": " + msg : ""}`;
}

// -- FHIR display helpers ---------------------------------------------------------------------
function codeText(cc) {
  if (!cc) return "";
  if (cc.text) return cc.text;
  const c = (cc.coding || [])[0];
  return c ? c.display || c.code || "" : "";
}
function humanName(p) {
  const n = (p.name || [])[0];
  if (!n) return "(no name)";
  return n.text || [...(n.given || []), n.family].filter(Boolean).join(" ");
}
function hasCode(cc, system, code) {
  return ((cc && cc.coding) || []).some((c) => (!system || c.system === system) && c.code === code);
}
function component(obs, code) {
  return (obs.component || []).find((c) => hasCode(c.code, null, code));
}
function valueText(x) {
  if (!x) return "";
  if (x.valueQuantity) return `${x.valueQuantity.value} ${x.valueQuantity.unit || x.valueQuantity.code || ""}`.trim();
  if (x.valueCodeableConcept) return codeText(x.valueCodeableConcept);
  if (x.valueString !== undefined) return x.valueString;
  if (x.valueBoolean !== undefined) return String(x.valueBoolean);
  if (x.valueInteger !== undefined) return String(x.valueInteger);
  if (x.valueRange) return `${(x.valueRange.low || {}).value ?? ""}-${(x.valueRange.high || {}).value ?? ""}`;
  return "";
}
function when(r) {
  return (r.effectiveDateTime || r.authoredOn || r.onsetDateTime || r.recordedDate || r.issued || (r.effectivePeriod || {}).start || "").slice(0, 10);
}

function table(headers, rows, onRow) {
  if (!rows.length) return el("p", { class: "muted" }, "None.");
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map(([cells, resource]) =>
      el("tr", { class: "clickable", onclick: () => onRow(resource) }, cells.map((c) => el("td", {}, c))))));
}

function jsonPanel() {
  const pre = el("pre", { hidden: "" });
  return { pre, show: (r) => { pre.hidden = false; pre.textContent = JSON.stringify(r, null, 2); pre.scrollIntoView({ block: "nearest" }); } };
}

// -- views --------------------------------------------------------------------------------------
async function viewPatients(query) {
  const box = el("input", { name: "q", placeholder: "name or identifier", value: query || "" });
  const form = el("form", { class: "row" }, box, el("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (e) => { e.preventDefault(); location.hash = "#/?q=" + encodeURIComponent(box.value); });
  const results = el("div", {}, el("p", { class: "muted" }, "Searching…"));
  view.replaceChildren(el("h1", {}, "Patients"), el("section", {}, form, results));
  let path = "/Patient?_count=50";
  if (query) path += (/^[\w.-]*\|/.test(query) || /^\d{6,}$/.test(query) ? "&identifier=" : "&name=") + encodeURIComponent(query);
  try {
    const patients = await search(path);
    results.replaceChildren(table(["Name", "Born", "Gender", "Identifier", "id"],
      patients.map((p) => [[humanName(p), p.birthDate || "", p.gender || "", ((p.identifier || [])[0] || {}).value || "", p.id], p]),
      (p) => { location.hash = "#/patient/" + encodeURIComponent(p.id); }));
  } catch (e) {
    results.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

async function viewPatient(id) {
  view.replaceChildren(el("p", {}, "Loading patient…"));
  const r = await api("GET", "/Patient/" + encodeURIComponent(id));
  if (r.status !== 200) { view.replaceChildren(el("p", { class: "error" }, outcomeText(r))); return; }
  const p = r.json;
  const panel = jsonPanel();
  const pid = encodeURIComponent(id);
  const sections = [
    ["Conditions", `/Condition?patient=${pid}&_count=100`, ["Condition", "Status", "Onset"],
      (c) => [codeText(c.code), codeText(c.clinicalStatus), when(c)]],
    ["Medications", `/MedicationRequest?patient=${pid}&_count=100`, ["Medication", "Status", "Authored"],
      (m) => [codeText(m.medicationCodeableConcept) || ((m.medicationReference || {}).display || ""), m.status || "", when(m)]],
    ["Laboratory", `/Observation?patient=${pid}&category=laboratory&_count=100&_sort=-date`, ["Test", "Value", "Date"],
      (o) => [codeText(o.code), valueText(o), when(o)], (o) => !hasCode(o.code, LOINC, "69548-6")],
    ["Genomic variants", `/Observation?patient=${pid}&code=${encodeURIComponent(LOINC + "|69548-6")}&_count=200`,
      ["Gene", "c.HGVS", "p.HGVS", "Zygosity", "Source"],
      (o) => [codeText((component(o, "48018-6") || {}).valueCodeableConcept), codeText((component(o, "48004-6") || {}).valueCodeableConcept),
        codeText((component(o, "48005-3") || {}).valueCodeableConcept), codeText((component(o, "53034-5") || {}).valueCodeableConcept),
        codeText((component(o, "48002-0") || {}).valueCodeableConcept)]],
    ["Genotypes (pharmacogenomics)", `/Observation?patient=${pid}&code=${encodeURIComponent(LOINC + "|84413-4")}&_count=100`,
      ["Gene", "Diplotype", "Date"], (o) => [codeText((component(o, "48018-6") || {}).valueCodeableConcept), valueText(o), when(o)]],
    ["Implications", `/Observation?patient=${pid}&code=${encodeURIComponent(TBD + "|therapeutic-implication")},${encodeURIComponent(TBD + "|diagnostic-implication")}&_count=100`,
      ["Kind", "Finding"], (o) => [codeText(o.code), (o.component || []).map((c) => `${codeText(c.code)}: ${valueText(c)}`).join("; ")]],
    ["Reports", `/DiagnosticReport?patient=${pid}&_count=50`, ["Report", "Status", "Issued", "Conclusion"],
      (d) => [codeText(d.code), d.status || "", when(d), d.conclusion || ""]],
  ];
  const born = [p.gender, p.birthDate].filter(Boolean).join(", born ");
  view.replaceChildren(
    el("h1", {}, humanName(p), " ", el("span", { class: "muted" }, born)),
    el("div", { class: "row" },
      (p.identifier || []).map((i) => el("span", { class: "tag", title: i.system || "" }, i.value)),
      el("a", { href: `${BASE}/Patient/${pid}/$everything`, target: "_blank", rel: "noopener" }, "$everything"),
      el("a", { href: "#", onclick: (e) => { e.preventDefault(); panel.show(p); } }, "raw JSON")),
    panel.pre);
  for (const [title, path, headers, cells, keep] of sections) {
    const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
    view.append(el("section", {}, el("h2", {}, title), body));
    search(path).then((rs) => {
      const kept = keep ? rs.filter(keep) : rs;
      body.replaceChildren(table(headers, kept.map((x) => [cells(x), x]), panel.show));
    }).catch((e) => body.replaceChildren(el("p", { class: "error" }, e.message)));
  }
}

function viewConsole() {
  const method = el("select", {}, ["GET", "POST", "PUT", "PATCH", "DELETE"].map((m) => el("option", {}, m)));
  const path = el("input", { value: "/Patient?_count=5", size: "60" });
  const body = el("textarea", { placeholder: "request body (JSON) for POST / PUT / PATCH" });
  const out = el("pre", {}, "Send a request to see the answer.");
  const form = el("form", {}, el("div", { class: "row" }, method, el("code", {}, BASE), path, el("button", { type: "submit" }, "Send")), body);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.textContent = "…";
    const hasBody = method.value !== "GET" && method.value !== "DELETE" && body.value.trim();
    const r = await api(method.value, path.value.startsWith("/") ? path.value : "/" + path.value, hasBody ? body.value : undefined);
    const head = [`HTTP ${r.status}`, ...["content-type", "etag", "location", "last-modified"].filter((h) => r.headers.get(h)).map((h) => `${h}: ${r.headers.get(h)}`)];
    out.textContent = head.join("\n") + "\n\n" + (r.json ? JSON.stringify(r.json, null, 2) : r.text);
  });
  view.replaceChildren(el("h1", {}, "Request console"), el("section", {}, form), out);
}

async function health() {
  const pill = document.getElementById("health");
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    pill.textContent = `${h.status} · ${h.store.backend} · cache ${h.cache.backend}`;
    pill.className = "pill " + (h.status === "ok" ? "ok" : "bad");
  } catch (e) {
    pill.textContent = "unreachable";
    pill.className = "pill bad";
  }
}

function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/patient\/([^/?]+)/);
  if (m) return viewPatient(decodeURIComponent(m[1]));
  if (hash.startsWith("#/console")) return viewConsole();
  const q = new URLSearchParams(hash.split("?")[1] || "").get("q");
  return viewPatients(q);
}

window.addEventListener("hashchange", route);
health();
route();
