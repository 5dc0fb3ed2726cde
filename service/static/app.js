// The CheXtriev viewer page: upload a radiograph (or pick a gallery case), check and correct its 18 region
// boxes, search, and look at a result beside the query with its saliency. Plain JavaScript, no library;
// every request goes to this service's own HTTP API (the page's Content-Security-Policy allows nothing else).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const KEY_STEP = 0.01; // arrow keys move or resize a box by 1 % of the image's size
const MIN_BOX = 4; // pixels: a box never becomes smaller than this while dragged

const state = {
  file: null, // the File searched with
  previewUrl: null, // object URL of the PNG preview the service made of it
  width: 0, height: 0, // the upload's pixels, the space of every box
  originalBoxes: [], // [{name, box}] as found by the anatomy model or read from a boxes file
  boxes: [], // the boxes shown and, once changed or read from a file, sent with the search
  sendBoxes: false,
  originalSend: false, // whether the original boxes came from a boxes file (and are sent)
  search: null, // the last search's response
};

const $ = (id) => document.getElementById(id);

// ---- the HTTP API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(problem) {
    super(problem.detail || problem.title);
    this.problem = problem;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError({ title: "The service cannot be reached", detail: "Check the network and try again." });
  }
  if (response.ok) return response;
  let problem = { title: `The service answered ${response.status}`, detail: response.statusText };
  try {
    problem = await response.json();
  } catch (error) { /* not a problem document: keep the status */ }
  throw new ApiError(problem);
}

function uploadForm(extra = {}) {
  const form = new FormData();
  form.append("image", state.file, state.file.name || "radiograph");
  for (const [name, value] of Object.entries(extra)) form.append(name, value);
  return form;
}

// ---- messages ---------------------------------------------------------------------------------------

function say(text) {
  $("status").textContent = text;
}

function showError(what, error) {
  const box = $("error");
  box.replaceChildren();
  const problem = error instanceof ApiError ? error.problem : { title: "Something went wrong", detail: String(error) };
  const heading = document.createElement("strong");
  heading.textContent = `${what}: ${problem.title}`;
  const detail = document.createElement("p");
  detail.textContent = problem.detail || "";
  box.append(heading, detail);
  const entries = (problem.errors || []).filter((entry) => entry.problem && entry.problem !== problem.detail);
  if (entries.length) {
    const list = document.createElement("ul");
    for (const entry of entries) {
      const item = document.createElement("li");
      item.textContent = (entry.region ? `${entry.region}: ` : `${entry.field}: `) + entry.problem;
      list.append(item);
    }
    box.append(list);
  }
  box.hidden = false;
  say("");
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

// ---- loading a radiograph ------------------------------------------------------------------------------

async function loadFile(file) {
  clearError();
  state.file = file;
  state.boxes = [];
  state.originalBoxes = [];
  state.sendBoxes = false;
  $("search-button").disabled = true;
  $("boxes-input").disabled = true;
  $("query-figure").hidden = true;
  $("roi").hidden = true;
  say(`Reading ${file.name}…`);
  let preview;
  try {
    const response = await api("/preview", { method: "POST", body: uploadForm() });
    state.width = Number(response.headers.get("X-Image-Width"));
    state.height = Number(response.headers.get("X-Image-Height"));
    preview = await response.blob();
  } catch (error) {
    state.file = null;
    showError(`${file.name} cannot be used`, error);
    return;
  }
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(preview);
  const image = $("query-image");
  image.src = state.previewUrl;
  image.alt = `The query radiograph ${file.name}, with its region boxes`;
  $("query-figure").hidden = false;
  $("boxes-input").disabled = false;
  $("search-button").disabled = false;
  say(`Finding the regions in ${file.name}…`);
  try {
    const found = await (await api("/regions", { method: "POST", body: uploadForm() })).json();
    setBoxes(found.regions, false);
    $("boxes-source").textContent = "Regions found by the anatomy model.";
    say(`${file.name}: ${found.width} × ${found.height} pixels, 18 regions found. Check them, then search.`);
  } catch (error) {
    setBoxes([], false);
    showError("The regions could not be found; load a boxes file to search", error);
  }
}

function setBoxes(regions, send) {
  state.originalBoxes = regions.map((region) => ({ name: region.name, box: [...region.box] }));
  state.boxes = regions.map((region) => ({ name: region.name, box: [...region.box] }));
  state.sendBoxes = send;
  state.originalSend = send;
  $("reset-boxes").disabled = true;
  drawEditableBoxes();
  buildRegionsOfInterest(regions.map((region) => region.name));
}

// A boxes file: {"right lung": [x1, y1, x2, y2], ...} or a Chest ImaGenome scene graph (objects with
// bbox_name and original_x1..original_y2). The service checks names and bounds when searching.
function parseBoxesFile(text) {
  const data = JSON.parse(text);
  let entries;
  if (data && Array.isArray(data.objects)) {
    entries = data.objects.map((object) => [object.bbox_name,
      [object.original_x1, object.original_y1, object.original_x2, object.original_y2]]);
  } else if (data && typeof data === "object" && !Array.isArray(data)) {
    entries = Object.entries(data);
  } else {
    throw new Error("expected an object of region boxes or a scene graph with objects");
  }
  const known = new Set(state.originalBoxes.map((region) => region.name));
  const regions = [];
  for (const [name, box] of entries) {
    if (known.size && !known.has(name)) continue; // scene graphs hold more objects than the 18 regions
    if (!Array.isArray(box) || box.length !== 4 || !box.every((value) => Number.isFinite(Number(value)))) {
      throw new Error(`the box of ${name} is not four numbers [x1, y1, x2, y2]`);
    }
    regions.push({ name, box: box.map(Number) });
  }
  if (!regions.length) throw new Error("the file holds no region boxes");
  return regions;
}

async function loadBoxesFile(file) {
  clearError();
  try {
    const regions = parseBoxesFile(await file.text());
    setBoxes(regions, true);
    $("boxes-source").textContent = `Regions read from ${file.name}.`;
    say(`${regions.length} region boxes read from ${file.name}.`);
  } catch (error) {
    showError(`${file.name} is not a boxes file`, { title: "It cannot be read", detail: error.message });
  }
}

// ---- drawing boxes ---------------------------------------------------------------------------------------

function svgElement(name, attributes = {}) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function placeRect(rect, box) {
  rect.setAttribute("x", box[0]);
  rect.setAttribute("y", box[1]);
  rect.setAttribute("width", Math.max(0, box[2] - box[0]));
  rect.setAttribute("height", Math.max(0, box[3] - box[1]));
}

// Larger boxes first, so that a smaller box drawn over a larger one can be pointed at.
function byAreaDescending(regions) {
  const area = (box) => (box[2] - box[0]) * (box[3] - box[1]);
  return regions.map((region, index) => ({ ...region, index })).sort((a, b) => area(b.box) - area(a.box));
}

function prepareSvg(svg, width, height) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
}

function boxLabel(region) {
  const [x1, y1, x2, y2] = region.box.map((value) => Math.round(value));
  return `${region.name}: x ${x1} to ${x2}, y ${y1} to ${y2}`;
}

function drawEditableBoxes() {
  const svg = $("query-boxes");
  prepareSvg(svg, state.width || 1, state.height || 1);
  const ticked = new Set(chosenRegionsOfInterest());
  const handleSize = Math.max(state.width, state.height) * 0.018;
  for (const region of byAreaDescending(state.boxes)) {
    const group = svgElement("g", { class: "region editable", tabindex: "0", role: "button",
      "data-index": region.index, "aria-label": `${boxLabel(region)}. Arrow keys move it, Shift and arrow keys resize it.` });
    if (ticked.has(region.name)) group.classList.add("roi");
    const rect = svgElement("rect", { class: "box" });
    placeRect(rect, region.box);
    const handle = svgElement("rect", { class: "handle", width: handleSize, height: handleSize,
      x: region.box[2] - handleSize / 2, y: region.box[3] - handleSize / 2 });
    group.append(rect, handle);
    group.addEventListener("pointerdown", (event) => startDrag(event, region.index, event.target === handle));
    group.addEventListener("keydown", (event) => keyMove(event, region.index));
    addTooltip(group, () => boxLabel(state.boxes[region.index]));
    svg.append(group);
  }
}

function redrawBox(index) {
  const group = $("query-boxes").querySelector(`g[data-index="${index}"]`);
  const region = state.boxes[index];
  placeRect(group.querySelector(".box"), region.box);
  const handle = group.querySelector(".handle");
  const size = Number(handle.getAttribute("width"));
  handle.setAttribute("x", region.box[2] - size / 2);
  handle.setAttribute("y", region.box[3] - size / 2);
  group.setAttribute("aria-label", `${boxLabel(region)}. Arrow keys move it, Shift and arrow keys resize it.`);
}

function boxesChanged() {
  state.sendBoxes = true;
  $("reset-boxes").disabled = false;
  $("boxes-source").textContent = "Regions corrected by hand: the search uses these boxes.";
}

function clampBox(box) {
  const [x1, y1] = [Math.min(Math.max(box[0], 0), state.width - MIN_BOX), Math.min(Math.max(box[1], 0), state.height - MIN_BOX)];
  return [x1, y1, Math.min(Math.max(box[2], x1 + MIN_BOX), state.width), Math.min(Math.max(box[3], y1 + MIN_BOX), state.height)];
}

function svgPoint(svg, event) {
  const point = svg.createSVGPoint();
  point.x = event.clientX;
  point.y = event.clientY;
  return point.matrixTransform(svg.getScreenCTM().inverse());
}

function startDrag(event, index, resizing) {
  if (event.button !== 0) return;
  const svg = $("query-boxes");
  const start = svgPoint(svg, event);
  const before = [...state.boxes[index].box];
  const group = event.currentTarget;
  group.setPointerCapture(event.pointerId);
  group.focus({ preventScroll: true });
  const move = (moveEvent) => {
    const now = svgPoint(svg, moveEvent);
    const [dx, dy] = [now.x - start.x, now.y - start.y];
    const moved = resizing ? [before[0], before[1], before[2] + dx, before[3] + dy]
      : translated(before, dx, dy);
    state.boxes[index].box = clampBox(moved);
    redrawBox(index);
  };
  const stop = () => {
    group.removeEventListener("pointermove", move);
    group.removeEventListener("pointerup", stop);
    group.removeEventListener("pointercancel", stop);
    if (state.boxes[index].box.some((value, i) => value !== before[i])) boxesChanged();
  };
  group.addEventListener("pointermove", move);
  group.addEventListener("pointerup", stop);
  group.addEventListener("pointercancel", stop);
  event.preventDefault();
}

function translated(box, dx, dy) {
  const width = box[2] - box[0];
  const height = box[3] - box[1];
  const x1 = Math.min(Math.max(box[0] + dx, 0), state.width - width);
  const y1 = Math.min(Math.max(box[1] + dy, 0), state.height - height);
  return [x1, y1, x1 + width, y1 + height];
}

const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

function keyMove(event, index) {
  const direction = ARROWS[event.key];
  if (!direction) return;
  event.preventDefault();
  const [dx, dy] = [direction[0] * state.width * KEY_STEP, direction[1] * state.height * KEY_STEP];
  const box = state.boxes[index].box;
  state.boxes[index].box = clampBox(event.shiftKey ? [box[0], box[1], box[2] + dx, box[3] + dy] : translated(box, dx, dy));
  redrawBox(index);
  boxesChanged();
}

function drawStaticBoxes(svg, regions, width, height, options = {}) {
  prepareSvg(svg, width, height);
  for (const region of byAreaDescending(regions)) {
    const group = svgElement("g", { class: "region", "data-name": region.name });
    if (options.marked && options.marked.has(region.name)) group.classList.add("roi");
    if (region.stands_out) group.classList.add("stands-out");
    const rect = svgElement("rect", { class: "box" });
    placeRect(rect, region.box);
    group.append(rect);
    addTooltip(group, () => options.describe ? options.describe(region) : region.name);
    group.addEventListener("pointerenter", () => highlightRegion(region.name, true));
    group.addEventListener("pointerleave", () => highlightRegion(region.name, false));
    svg.append(group);
  }
}

function highlightRegion(name, on) {
  for (const element of document.querySelectorAll("#detail-panel [data-name]")) {
    if (element.dataset.name === name) element.classList.toggle("highlight", on);
  }
}

// ---- tooltip ---------------------------------------------------------------------------------------------

function addTooltip(element, text) {
  const show = (event) => {
    const tip = $("tooltip");
    tip.textContent = text();
    tip.hidden = false;
    const bounds = event && event.clientX !== undefined ? { x: event.clientX, y: event.clientY }
      : centre(element.getBoundingClientRect());
    tip.style.left = `${Math.min(bounds.x + 14, window.innerWidth - tip.offsetWidth - 8) + window.scrollX}px`;
    tip.style.top = `${bounds.y + 14 + window.scrollY}px`;
  };
  const hide = () => { $("tooltip").hidden = true; };
  element.addEventListener("pointermove", show);
  element.addEventListener("focus", () => show(null));
  element.addEventListener("pointerleave", hide);
  element.addEventListener("blur", hide);
}

function centre(rect) {
  return { x: rect.left + rect.width / 2, y: rect.top + rect.height / 2 };
}

// ---- regions of interest ------------------------------------------------------------------------------------

function buildRegionsOfInterest(names) {
  const list = $("roi-list");
  list.replaceChildren();
  names.forEach((name, index) => {
    const id = `roi-${index}`;
    const box = Object.assign(document.createElement("input"), { type: "checkbox", id, value: name });
    box.addEventListener("change", drawEditableBoxes);
    const label = Object.assign(document.createElement("label"), { htmlFor: id, textContent: name });
    const item = document.createElement("div");
    item.append(box, label);
    list.append(item);
  });
  $("roi").hidden = names.length === 0;
}

function chosenRegionsOfInterest() {
  return [...document.querySelectorAll("#roi-list input:checked")].map((box) => box.value);
}

// ---- search and results --------------------------------------------------------------------------------------

async function search() {
  if (!state.file) return;
  clearError();
  const fields = { k: $("k-input").value || "5" };
  if (state.sendBoxes) {
    fields.regions = JSON.stringify(Object.fromEntries(state.boxes.map((region) => [region.name, region.box])));
  }
  const roi = chosenRegionsOfInterest();
  if (roi.length) fields.regions_of_interest = JSON.stringify(roi);
  say("Searching the gallery…");
  $("search-button").disabled = true;
  try {
    state.search = await (await api("/search", { method: "POST", body: uploadForm(fields) })).json();
    showResults(state.search);
  } catch (error) {
    showError("The search failed", error);
  } finally {
    $("search-button").disabled = false;
  }
}

function describeMetadata(metadata) {
  return ["view", "sex", "age"].filter((key) => metadata && metadata[key] !== undefined && metadata[key] !== null)
    .map((key) => `${key} ${metadata[key]}`).join(", ");
}

function showResults(found) {
  const list = $("results");
  list.replaceChildren();
  for (const result of found.results) {
    const button = Object.assign(document.createElement("button"), { type: "button", className: "result" });
    button.dataset.caseId = result.case_id;
    const thumbnail = Object.assign(document.createElement("img"), {
      src: `/cases/${encodeURIComponent(result.case_id)}/thumbnail`, alt: `Radiograph of case ${result.case_id}`,
      loading: "lazy" });
    const text = document.createElement("span");
    text.className = "result-text";
    const title = Object.assign(document.createElement("strong"), { textContent: `${result.rank}. ${result.case_id}` });
    const score = Object.assign(document.createElement("span"), { textContent: `similarity ${result.score.toFixed(3)}` });
    const findings = Object.assign(document.createElement("span"),
      { textContent: result.findings.length ? result.findings.join(", ") : "no finding recorded" });
    const view = Object.assign(document.createElement("span"), { className: "meta", textContent: describeMetadata(result.metadata) });
    text.append(title, score, findings, view);
    button.append(thumbnail, text);
    button.addEventListener("click", () => openCase(result, button));
    const item = document.createElement("li");
    item.append(button);
    list.append(item);
  }
  const source = found.regions_source === "client" ? "the boxes sent" : "the regions the anatomy model found";
  $("search-summary").textContent = `${found.results.length} similar cases, best first (searched with ${source}). `
    + "Choose one to see it beside the query.";
  say(`${found.results.length} similar cases found.`);
  $("results-panel").focus();
}

function regionsOfInterestText(found) {
  const used = found.regions_of_interest;
  if (Array.isArray(used) && used.length) return `Search restricted to the regions of interest: ${used.join(", ")}.`;
  return "Search over the whole image (no regions of interest).";
}

// ---- a result beside the query ----------------------------------------------------------------------------------

async function openCase(result, button) {
  for (const other of document.querySelectorAll("#results .result")) other.removeAttribute("aria-current");
  button.setAttribute("aria-current", "true");
  clearError();
  say(`Explaining case ${result.case_id} (a few seconds when its saliency is not ready yet)…`);
  const found = state.search;
  const query = { query_id: found.query_id, case_id: result.case_id };
  let stored;
  let saliency;
  try {
    [stored, saliency] = await Promise.all([
      api(`/cases/${encodeURIComponent(result.case_id)}`).then((response) => response.json()),
      api(`/saliency?${new URLSearchParams(query)}`).then((response) => response.json())]);
  } catch (error) {
    showError(`Case ${result.case_id} cannot be explained`, error);
    return;
  }
  const panel = $("detail-panel");
  panel.hidden = false;
  $("roi-used").textContent = regionsOfInterestText(found);
  const queryImage = $("detail-query-image");
  queryImage.src = state.previewUrl;
  queryImage.alt = `The query radiograph ${state.file.name} with the regions the search used`;
  const marked = new Set(found.regions_of_interest || []);
  drawStaticBoxes($("detail-query-boxes"), found.regions, state.width, state.height, { marked });
  showSaliency(result, stored, saliency, query);
  say(`Case ${result.case_id} beside the query.`);
  panel.focus();
}

function dropText(region) {
  return `${region.name}: similarity drop ${region.similarity_drop.toFixed(4)}`
    + (region.stands_out ? " (stands out)" : " (below the noise floor)");
}

function showSaliency(result, stored, saliency, query) {
  const image = $("saliency-image");
  const svg = $("saliency-boxes");
  const standing = saliency.regions.filter((region) => region.stands_out);
  image.alt = `Case ${result.case_id} with its saliency heatmap: ` + (standing.length
    ? `${standing.length} regions stand out, most of all ${largestDrop(saliency.regions).name}`
    : "no region stands out above the noise floor");
  svg.replaceChildren();
  image.addEventListener("load", () => {
    // The PNG is the case's image with a legend below it: the boxes cover the image part only.
    const imageHeight = stored.height * (image.naturalWidth / stored.width);
    svg.style.height = `${(100 * imageHeight) / image.naturalHeight}%`;
    drawStaticBoxes(svg, saliency.regions, stored.width, stored.height, { describe: dropText });
  }, { once: true });
  image.src = `/saliency?${new URLSearchParams({ ...query, format: "png" })}`;
  $("case-caption").textContent = `Case ${result.case_id}: ${result.findings.join(", ") || "no finding recorded"}`
    + `${describeMetadata(result.metadata) ? "; " + describeMetadata(result.metadata) : ""}. `
    + `Similarity ${saliency.similarity.toFixed(3)}.`;
  const floor = saliency.noise_floor;
  $("saliency-verdict").textContent = standing.length
    ? `${standing.length} of 18 regions stand out: blanking them lowers the similarity by more than the noise floor `
      + `(${floor}). The largest drop: ${largestDrop(saliency.regions).name}.`
    : `No region stands out: every similarity drop is below the noise floor (${floor}), the change seen when the `
      + "same radiograph is embedded again. The match rests on no single region.";
  $("saliency-verdict").classList.toggle("none", !standing.length);
  fillRegionTable(saliency);
}

function largestDrop(regions) {
  return regions.reduce((best, region) => (region.similarity_drop > best.similarity_drop ? region : best));
}

function fillRegionTable(saliency) {
  const body = $("region-table").querySelector("tbody");
  body.replaceChildren();
  const ranked = [...saliency.regions].sort((a, b) => b.similarity_drop - a.similarity_drop);
  ranked.forEach((region, position) => {
    const row = document.createElement("tr");
    row.dataset.name = region.name;
    row.classList.toggle("stands-out", region.stands_out);
    const bar = Object.assign(document.createElement("meter"), { min: 0, max: saliency.scale_max,
      value: Math.max(0, region.similarity_drop), title: `${region.similarity_drop.toFixed(4)} of ${saliency.scale_max}` });
    const cells = [String(position + 1), region.name, region.similarity_drop.toFixed(4), bar, region.stands_out ? "yes" : "no"];
    for (const content of cells) {
      const cell = document.createElement("td");
      cell.append(content);
      row.append(cell);
    }
    row.addEventListener("pointerenter", () => highlightRegion(region.name, true));
    row.addEventListener("pointerleave", () => highlightRegion(region.name, false));
    body.append(row);
  });
}

// ---- the gallery ---------------------------------------------------------------------------------------------------

async function loadGallery() {
  const list = $("gallery-list");
  if (list.childElementCount) return;
  try {
    const listing = await (await api("/cases?limit=48")).json();
    for (const entry of listing.cases) {
      const button = Object.assign(document.createElement("button"), { type: "button", className: "gallery-case" });
      const thumbnail = Object.assign(document.createElement("img"),
        { src: entry.thumbnail_url, alt: `Radiograph of case ${entry.case_id}`, loading: "lazy" });
      button.append(thumbnail, document.createTextNode(entry.case_id));
      button.addEventListener("click", () => startFromCase(entry));
      const item = document.createElement("li");
      item.append(button);
      list.append(item);
    }
  } catch (error) {
    showError("The gallery cannot be listed", error);
  }
}

async function startFromCase(entry) {
  try {
    const blob = await (await api(entry.image_url)).blob();
    await loadFile(new File([blob], `${entry.case_id}.png`, { type: "image/png" }));
  } catch (error) {
    showError(`Case ${entry.case_id} cannot be loaded`, error);
  }
}

// ---- wiring ---------------------------------------------------------------------------------------------------------

function wire() {
  $("image-input").addEventListener("change", (event) => {
    if (event.target.files.length) loadFile(event.target.files[0]);
  });
  $("boxes-input").addEventListener("change", (event) => {
    if (event.target.files.length) loadBoxesFile(event.target.files[0]);
    event.target.value = "";
  });
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) loadFile(event.dataTransfer.files[0]);
  });
  $("gallery").addEventListener("toggle", (event) => { if (event.target.open) loadGallery(); });
  $("reset-boxes").addEventListener("click", () => {
    setBoxes(state.originalBoxes, state.originalSend);
    $("boxes-source").textContent = "Box changes undone.";
  });
  $("search-button").addEventListener("click", search);
}

wire();
