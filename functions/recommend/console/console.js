// The operator console: renders the recommend function's own JSON endpoints, nothing else.
// Every number shown comes from /recommendations, /similar-items or /console/api/*. The page is
// served at <function>/console/, so relative URLs reach the function wherever it is mounted.
"use strict";

const API = { recs: "../recommendations", similar: "../similar-items", system: "api/system",
              user: "api/user", item: "api/item" };
const $ = (id) => document.getElementById(id);
const state = { user: null, alphaTouched: false, recsSeq: 0, itemSeq: 0, features: {} };

const prefetched = new Map();  // URL -> the response promise of a request sent before the DOM was ready

async function getJson(url, params) {
  const qs = new URLSearchParams(params || {}).toString();
  const full = qs ? `${url}?${qs}` : url;
  const early = prefetched.get(full);
  prefetched.delete(full);
  const resp = await (early || fetch(full, { headers: { Accept: "application/json" } }));
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
  return body;
}

const num = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const figure = (x) => (Number.isInteger(x) ? String(x) : num(x, 4));
const age = (s) => (s === null || s === undefined ? "–" : `${num(s, 1)} s ago`);
const when = (ms) => (ms ? new Date(ms).toISOString().replace(".000Z", "Z") : "–");

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fillTable(id, rows, columns, onClick) {
  const tbody = $(id).querySelector("tbody");
  if (!rows.length) {
    const tr = document.createElement("tr"), td = cell("none", "meta");
    tr.className = "empty";
    td.colSpan = columns.length;
    tr.appendChild(td);
    tbody.replaceChildren(tr);
    return;
  }
  tbody.replaceChildren(...rows.map((r, i) => {
    const tr = document.createElement("tr");
    columns.forEach(([fn, cls]) => tr.appendChild(cell(fn(r, i), cls)));
    if (onClick) tr.addEventListener("click", () => onClick(r));
    return tr;
  }));
}

function fillFacts(id, pairs) {
  $(id).replaceChildren(...pairs.flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v === null || v === undefined ? "–" : String(v);
    return [dt, dd];
  }));
}

function showError(id, err) {
  $(id).hidden = !err;
  $(id).textContent = err ? err.message : "";
}

// ---------------------------------------------------------------- system
async function loadSystem() {
  let s;
  try { s = await getJson(API.system); } catch (e) { showError("system-error", e); return; }
  showError("system-error", null);
  state.features = s.features;
  $("diversity-control").hidden = !s.features.diversity;  // only when the API takes it
  const ix = s.index, m = s.model;
  $("status").textContent = ix.status;
  $("status").className = `pill ${ix.status}`;
  $("model-line").textContent = ix.model_version ? `model ${ix.model_version}` : "no model";
  fillFacts("model-facts", m ? [
    ["version", m.version], ["status", m.status], ["trained", when(m.created_at)],
    ["parent", m.parent_version], ["switched", when(m.switched_at)], ["items", m.item_count],
    ["dim", m.dim],
    ...Object.entries(m.trained_on || {}).map(([k, v]) => [`trained on ${k}`, v]),
    ...Object.entries(m.figures || {}).map(([k, v]) => [k, figure(v)]),
  ] : [["model", "none published"]]);
  fillFacts("index-facts", [
    ["items", ix.item_count], ["added since snapshot", ix.items_added_since_snapshot],
    ["snapshot", when(ix.index_created_at)], ["age", age(ix.index_age_s)],
    ["retrieval", ix.retrieval], ["trending items", ix.trending_items],
  ]);
  const t = s.trending;
  fillTable("trending", t ? t.items : [], [[(r) => r.item_id], [(r) => r.category],
    [(r) => num(r.score), "num"], [(r) => r.views, "num"]], (r) => loadItem(r.item_id));
  const f = s.freshness;
  fillTable("fresh", f.newest_users, [[(r) => r.user_id], [(r) => age(r.age_s)],
    [(r) => r.event_count, "num"]], (r) => showUser(r.user_id));
  $("recent-users").replaceChildren(...f.newest_users.map((r) => {
    const o = document.createElement("option");
    o.value = r.user_id;
    return o;
  }));
  renderExperiments(s.experiments);
}

function renderExperiments(x) {
  const box = $("experiments");
  if (x.state === "none") {
    box.innerHTML = '<p class="meta" id="experiments-none">none (no experiments/* or stats/experiments)</p>';
    return;
  }
  box.replaceChildren(...[...x.experiments.map((e) => ["experiments/" + e.id, e]),
                          ...x.arm_stats.map((a) => [a.path, a])].map(([title, doc]) => {
    const div = document.createElement("div"), h = document.createElement("h4"),
      dl = document.createElement("dl");
    h.textContent = title;
    dl.className = "facts";
    div.append(h, dl);
    Object.entries(doc).filter(([k]) => k !== "id" && k !== "path").forEach(([k, v]) => {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = typeof v === "object" ? JSON.stringify(v) : String(v);
      dl.append(dt, dd);
    });
    return div;
  }));
}

// ---------------------------------------------------------------- user
async function showUser(userId) {
  state.user = userId;
  state.alphaTouched = false;
  $("user-input").value = userId;
  history.replaceState(null, "", `?user_id=${encodeURIComponent(userId)}`);
  await Promise.all([loadUserDoc(userId), loadRecs()]);
}

async function loadUserDoc(userId) {
  let u;
  try { u = await getJson(API.user, { user_id: userId }); } catch (e) {
    if (state.user !== userId) return;
    // e.g. no document yet: /recommendations still answers (session or cold start)
    $("user-id").textContent = userId;
    fillFacts("user-facts", [["user document", e.message]]);
    fillTable("history", [], [[(r) => r], [(r) => r], [(r) => r], [(r) => r], [(r) => r]]);
    return;
  }
  if (state.user !== userId) return;
  $("user-id").textContent = u.user_id;
  fillFacts("user-facts", [
    ["events", u.event_count], ["last event", `${u.last_event_id || "–"} (${age(u.since_last_event_s)})`],
    ["document updated", age(u.since_update_s)], ["embedding", `${u.embedding} (${u.model_version || "–"})`],
  ]);
  fillTable("history", u.history, [[(r) => r.item_id], [(r) => r.category], [(r) => r.brand],
    [(r) => r.event_type], [(r) => age(r.age_s)]], (r) => loadItem(r.item_id));
}

async function loadRecs() {
  const userId = state.user, seq = ++state.recsSeq;
  const params = { user_id: userId, k: 10 };
  if (state.alphaTouched) params.alpha = $("alpha").value;
  if (state.features.diversity && Number($("diversity").value) > 0) params.diversity = $("diversity").value;
  let r;
  try { r = await getJson(API.recs, params); } catch (e) {
    if (seq === state.recsSeq) { showError("user-error", e); $("user-panel").hidden = true; }
    return;
  }
  if (seq !== state.recsSeq) return;  // a newer query is under way
  showError("user-error", null);
  $("user-panel").hidden = false;
  if (!state.alphaTouched && r.alpha !== null) $("alpha").value = r.alpha;
  $("alpha-out").textContent = r.alpha === null ? "–" : num(r.alpha, 2) + (state.alphaTouched ? "" : " (default)");
  $("recs-meta").textContent = `strategy ${r.strategy}` + (r.query ? ` (${r.query})` : "") +
    ` · model ${r.model_version || "–"} · degraded ${r.degraded ? "yes" : "no"}`;
  fillTable("recs", r.items, [[(x, i) => i + 1, "num"], [(x) => x.item_id], [(x) => num(x.score), "num"],
    [(x) => num(x.cf_score), "num"], [(x) => num(x.cb_score), "num"]], (x) => loadItem(x.item_id));
  const table = $("recs");
  table.dataset.alpha = params.alpha === undefined ? "default" : params.alpha;
  table.dataset.seq = String(seq);
  table.dataset.user = userId;
  if (!performance.getEntriesByName("recs-rendered").length) performance.mark("recs-rendered");
}

// ---------------------------------------------------------------- item
async function loadItem(itemId) {
  const seq = ++state.itemSeq;
  $("item-id").textContent = itemId;
  $("item-hint").hidden = true;
  let sim, who;
  try {
    [sim, who] = await Promise.all([getJson(API.similar, { item_id: itemId, k: 10 }),
                                    getJson(API.item, { item_id: itemId, k: 10 })]);
  } catch (e) {
    if (seq === state.itemSeq) { showError("item-error", e); $("item-panel").hidden = true; }
    return;
  }
  if (seq !== state.itemSeq) return;
  showError("item-error", null);
  $("item-panel").hidden = false;
  const a = who.attributes || {};
  fillFacts("item-facts", [["title", a.title], ["category", who.category], ["brand", a.brand],
    ["in stock", who.in_stock], ["popularity", num(who.popularity, 1)], ["basis", sim.basis]]);
  fillTable("similar", sim.items, [[(x, i) => i + 1, "num"], [(x) => x.item_id], [(x) => num(x.score), "num"]],
    (x) => loadItem(x.item_id));
  $("reco-to-summary").textContent =
    `${who.recommended_count} of the ${who.sample_size} newest users (top ${who.k}, model's default α)`;
  fillTable("reco-to", who.recommended_to, [[(x) => x.user_id], [(x) => x.rank, "num"],
    [(x) => num(x.score), "num"], [(x) => x.strategy]]);
  $("item-panel").dataset.item = itemId;
}

// ---------------------------------------------------------------- wiring
function debounce(fn, ms) {
  let t;
  return () => { clearTimeout(t); t = setTimeout(fn, ms); };
}

// The page's script runs in <head> (the server inlines it): a deep link's two requests leave now,
// while the body is parsed; showUser() picks their responses up.
const FIRST_USER = new URLSearchParams(location.search).get("user_id");
if (FIRST_USER) {
  for (const [url, params] of [[API.user, { user_id: FIRST_USER }], [API.recs, { user_id: FIRST_USER, k: 10 }]]) {
    const full = `${url}?${new URLSearchParams(params)}`;
    prefetched.set(full, fetch(full, { headers: { Accept: "application/json" } }));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const requery = debounce(loadRecs, 60);
  $("user-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("user-input").value.trim();
    if (id) showUser(id);
  });
  $("alpha").addEventListener("input", () => {
    state.alphaTouched = true;
    $("alpha-out").textContent = num($("alpha").value, 2);
    if (state.user) requery();
  });
  $("diversity").addEventListener("input", () => {
    $("diversity-out").textContent = num($("diversity").value, 2);
    if (state.user) requery();
  });
  // A deep link's recommendations go first; the system panel follows (it is not on that path).
  if (FIRST_USER) showUser(FIRST_USER).finally(loadSystem);
  else loadSystem().then(() => { $("user-input").focus(); });
});
