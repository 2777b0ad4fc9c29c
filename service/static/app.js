// snap2shop search page: pick or drop a photo, optionally box the garment, see the matching items.
// Plain browser JavaScript, no build step and no third-party code: everything is served by the app.
"use strict";

const $ = (id) => document.getElementById(id);
const MIN_BOX = 8; // pixels of the photo; the server refuses smaller regions

// box: the region the user chose; found: where the model found the garment (drawn until the user
// picks a region of their own, and the starting point when they adjust it with the keyboard).
const state = { file: null, box: null, found: null, controller: null };

function naturalSize() {
  const img = $("query-image");
  return { w: img.naturalWidth, h: img.naturalHeight };
}

// Screen <-> photo pixel conversions. The browser shows the photo EXIF-rotated, and the server
// applies the box after the same rotation, so displayed coordinates map straight to photo pixels.
function toPhoto(clientX, clientY) {
  const rect = $("query-image").getBoundingClientRect();
  const { w, h } = naturalSize();
  const x = Math.min(Math.max(clientX - rect.left, 0), rect.width);
  const y = Math.min(Math.max(clientY - rect.top, 0), rect.height);
  return { x: (x / rect.width) * w, y: (y / rect.height) * h };
}

function drawBox() {
  const el = $("box");
  $("clear-box-button").disabled = !state.box;
  const b = state.box || state.found;
  el.classList.toggle("found", !state.box && !!state.found);
  el.title = state.box ? "" : "Where the garment was found: drag or use the arrow keys to adjust";
  if (!b) { el.hidden = true; return; }
  const { w, h } = naturalSize();
  if (!w) { el.hidden = true; return; }
  Object.assign(el.style, {
    left: `${(b.x0 / w) * 100}%`, top: `${(b.y0 / h) * 100}%`,
    width: `${((b.x1 - b.x0) / w) * 100}%`, height: `${((b.y1 - b.y0) / h) * 100}%`,
  });
  el.hidden = false;
}

function setBox(box) {
  if (box) {
    const { w, h } = naturalSize();
    const x0 = Math.round(Math.max(0, Math.min(box.x0, box.x1)));
    const y0 = Math.round(Math.max(0, Math.min(box.y0, box.y1)));
    const x1 = Math.round(Math.min(w, Math.max(box.x0, box.x1)));
    const y1 = Math.round(Math.min(h, Math.max(box.y0, box.y1)));
    box = (x1 - x0 >= MIN_BOX && y1 - y0 >= MIN_BOX) ? { x0, y0, x1, y1 } : null;
  }
  state.box = box;
  drawBox();
}

function setStatus(text, busy = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("busy", busy);
  el.setAttribute("aria-busy", busy ? "true" : "false");
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function errorText(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
  return `The server answered ${status}.`;
}

function renderResults(results) {
  const list = $("results");
  list.replaceChildren();
  for (const [rank, r] of results.entries()) {
    const li = document.createElement("li");
    li.className = "card";
    li.dataset.itemId = r.item_id;
    const img = document.createElement("img");
    img.src = r.image_url;
    img.loading = "lazy";
    img.alt = r.title || r.category || `Item ${r.item_id}`;
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    score.title = "similarity (1 = identical)";
    const title = document.createElement("p");
    title.className = "title";
    title.textContent = r.title || r.item_id;
    const sub = document.createElement("p");
    sub.className = "sub";
    sub.textContent = [`#${rank + 1}`, r.item_id !== title.textContent ? r.item_id : null, r.category]
      .filter(Boolean).join(" · ");
    meta.append(score, title, sub);
    li.append(img, meta);
    list.append(li);
  }
}

async function search() {
  if (!state.file) return;
  if (state.controller) state.controller.abort(); // the newest question wins
  const controller = new AbortController();
  state.controller = controller;
  const params = new URLSearchParams({ k: $("k-select").value });
  const category = $("category-select").value;
  if (category) params.set("category", category);
  if (state.box) params.set("box", [state.box.x0, state.box.y0, state.box.x1, state.box.y1].join(","));
  const form = new FormData();
  form.append("image", state.file, state.file.name || "photo.jpg");
  showError("");
  setStatus("Searching…", true);
  try {
    const response = await fetch(`/search?${params}`, { method: "POST", body: form, signal: controller.signal });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      renderResults([]);
      showError(errorText(body, response.status));
      setStatus("");
      return;
    }
    renderResults(body.results);
    if (!state.box) {
      const r = body.region;
      state.found = r ? { x0: r[0], y0: r[1], x1: r[2], y1: r[3] } : null;
      drawBox();
    }
    const where = state.box ? "selected region" : (state.found ? "garment found in the photo" : "whole photo");
    setStatus(body.results.length
      ? `${body.results.length} items for the ${where} in ${Math.round(body.took_ms)} ms`
      : "No items match.");
  } catch (err) {
    if (err.name === "AbortError") return;
    showError("Could not reach the search service. Check the connection and try again.");
    setStatus("");
  } finally {
    if (state.controller === controller) state.controller = null;
  }
}

function useFile(file) {
  if (!file) return;
  state.file = file;
  state.box = null;
  state.found = null;
  const img = $("query-image");
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = URL.createObjectURL(file);
  img.onload = () => { $("preview").hidden = false; drawBox(); };
  img.onerror = () => { $("preview").hidden = true; }; // the server's answer explains why
  img.src = img.dataset.url;
  search();
}

function wirePickers() {
  for (const id of ["file-input", "camera-input"]) {
    $(id).addEventListener("change", (e) => { useFile(e.target.files[0]); e.target.value = ""; });
  }
  const zone = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); zone.classList.remove("dragging"); });
  }
  document.addEventListener("drop", (e) => useFile(e.dataTransfer.files[0]));
  $("k-select").addEventListener("change", search);
  $("category-select").addEventListener("change", search);
  $("search-button").addEventListener("click", search);
}

function wireBoxDrawing() {
  const layer = $("box-layer");
  let start = null;
  layer.addEventListener("pointerdown", (e) => {
    start = toPhoto(e.clientX, e.clientY);
    layer.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  layer.addEventListener("pointermove", (e) => {
    if (!start) return;
    const p = toPhoto(e.clientX, e.clientY);
    state.box = { x0: Math.min(start.x, p.x), y0: Math.min(start.y, p.y), x1: Math.max(start.x, p.x), y1: Math.max(start.y, p.y) };
    drawBox();
  });
  layer.addEventListener("pointerup", (e) => {
    if (!start) return;
    const p = toPhoto(e.clientX, e.clientY);
    const had = state.box;
    setBox({ x0: start.x, y0: start.y, x1: p.x, y1: p.y });
    start = null;
    if (state.box || had) search(); // a click without a drag keeps the whole photo
  });

  // Keyboard: S makes a centred region, arrows move it, Shift+arrows resize it.
  layer.addEventListener("keydown", (e) => {
    const { w, h } = naturalSize();
    if (!w) return;
    const step = Math.max(1, Math.round(Math.min(w, h) * 0.03));
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (e.key === "s" || e.key === "S") {
      setBox({ x0: w * 0.2, y0: h * 0.2, x1: w * 0.8, y1: h * 0.8 });
    } else if (e.key in moves && (state.box || state.found)) {
      const [dx, dy] = moves[e.key];
      const b = state.box || state.found;
      if (e.shiftKey) setBox({ ...b, x1: b.x1 + dx, y1: b.y1 + dy });
      else {
        const cx = Math.min(Math.max(dx, -b.x0), w - b.x1), cy = Math.min(Math.max(dy, -b.y0), h - b.y1);
        setBox({ x0: b.x0 + cx, y0: b.y0 + cy, x1: b.x1 + cx, y1: b.y1 + cy });
      }
    } else if (e.key === "Enter") {
      search();
    } else if (e.key === "Escape") {
      setBox(null);
    } else {
      return;
    }
    e.preventDefault();
  });
  $("select-button").addEventListener("click", () => {
    const { w, h } = naturalSize();
    setBox({ x0: w * 0.2, y0: h * 0.2, x1: w * 0.8, y1: h * 0.8 });
    layer.focus();
  });
  $("clear-box-button").addEventListener("click", () => { setBox(null); search(); });
}

async function loadCategories() {
  try {
    const response = await fetch("/categories");
    if (!response.ok) return;
    const select = $("category-select");
    for (const { value, items } of (await response.json()).values) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = `${value} (${items})`;
      select.append(option);
    }
    select.closest("label").hidden = select.options.length <= 1;
  } catch { /* filters are optional; search still works */ }
}

wirePickers();
wireBoxDrawing();
loadCategories();
