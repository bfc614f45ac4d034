// hero feedback page: poll the server's state, show the round, collect good/best marks, submit.
// A pairwise round (D3PO, state.kind === "pairs") is handled by pairs.js instead.
// No build step, no dependencies. Marks in progress are saved in localStorage (per run and round), so a
// refresh, a closed tab or a restarted server loses nothing; submitted rounds live in the server's log.
"use strict";

const $ = (id) => document.getElementById(id);
const KEEP = "keep"; // best = the current best (sent as null)
const NUM_WAIT = 800; // ms a digit that can begin a longer image number waits for the next digit (docs/web.md)

const ui = {
  state: null,        // last /api/state
  round: null,        // round shown in the grid
  runId: null,        // the run it belongs to (another run may later be served on the same port)
  good: new Set(),    // indices marked good
  groups: [],         // the round's prompt groups [{prompt, ids, current_best}]: one unless a prompt set
  groupOf: [],        // image index -> its group
  bests: [],          // per group: null (none yet), KEEP, or an index of that group
  history: [],        // undo stack of {good, bests}
  focus: 0,           // focused cell: 0..n-1, or -(g+1) for group g's current-best tile
  numBuf: "", numShift: false, numTimer: null, // digits typed but not applied yet (see typeDigit)
  armed: null,        // a warning shown once; the second Enter submits anyway
  sending: false,
  pollTimer: null,
};

// ---------------------------------------------------------------- server

async function api(path, options = {}) {
  const res = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  return { status: res.status, ok: res.ok, body };
}

async function poll() {
  clearTimeout(ui.pollTimer);
  let next = 1000;
  try {
    const { status, body } = await api("/api/state");
    if (status === 401) return fatal("Not signed in: open the URL that hero printed (it ends in ?token=…).");
    $("offline").hidden = true;
    if (body) apply(body);
    if (body && body.phase === "done") return;
    if (body && body.phase === "judging") next = 2500; // still poll: another tab may have submitted
  } catch (_) {
    $("offline").hidden = false; // server restarting: keep everything, try again
    next = 1500;
  }
  ui.pollTimer = setTimeout(poll, next);
}

function apply(s) {
  ui.state = s;
  $("prompt").textContent = s.prompt || $("prompt").textContent;
  $("progress").textContent = `Round ${s.round_number} of ${s.rounds_total} · ${s.feedback} of ${s.budget} feedback`;
  $("bar-fill").style.width = `${Math.min(100, (100 * s.feedback) / Math.max(1, s.budget))}%`;
  if (s.phase === "judging") document.body.dataset.kind = s.kind || "good_best"; // which keys the footer lists
  show(s.phase);
  if (s.phase === "judging" && (s.round !== ui.round || s.run_id !== ui.runId)) startRound(s);
  if (s.phase !== "judging") {
    ui.round = null;
    $("busy-title").textContent = s.mode === "label" ? "Loading the next round…" :
      s.feedback > 0 ? "The model is learning…" : "Getting the first images ready…";
    $("busy-message").textContent = s.message || "The next round appears here by itself.";
    $("busy-time").textContent = s.phase === "learning" ? waitText(s) : "";
    if (s.phase === "done") $("done-message").textContent = s.message || "All rounds are judged. Thank you!";
  }
}

// How long a person can expect to wait, from the server's clock: the last learning phase as measured (a submission
// committed -> the next round up) and the seconds of this one so far. Without a measurement, say so.
function waitText(s) {
  if (s.learning_s === null || s.learning_s === undefined) return "";
  const sofar = `${duration(s.learning_s)} so far`;
  if (s.mode === "label" || s.feedback === 0) return `${sofar}.`; // loading, or the first images: nothing to learn
  if (s.last_learning_s === null || s.last_learning_s === undefined) {
    return `No estimate yet: this is the first round the model learns from since hero started, so there is no ` +
           `measured time to go by (${sofar}).`;
  }
  const last = `Last round, the next images were ready ${duration(s.last_learning_s)} after the submission`;
  const left = s.last_learning_s - s.learning_s;
  return left >= 1 ? `${last}: about ${duration(left)} to go (${sofar}).`
                   : `${last}; this one is taking longer (${sofar}).`;
}

function duration(seconds) {
  const t = Math.max(0, Math.round(seconds)), m = Math.floor(t / 60), sec = t % 60;
  return m === 0 ? `${sec} s` : sec === 0 ? `${m} min` : `${m} min ${sec} s`;
}

function show(phase) {
  $("judge").hidden = phase !== "judging";
  $("busy").hidden = phase !== "learning";
  $("done").hidden = phase !== "done";
  $("bottom").classList.toggle("inactive", phase !== "judging");
}

function fatal(text) {
  show("none");
  $("message").textContent = text;
  $("message").className = "message error";
}

// ---------------------------------------------------------------- a round

function draftKey() { return `hero:${ui.state.run_id}:${ui.round}`; }

function dropOldDrafts(s) {
  const prefix = `hero:${s.run_id}:`;
  for (const key of Object.keys(localStorage)) {
    if (key.startsWith(prefix) && Number(key.slice(prefix.length)) < s.round) localStorage.removeItem(key);
  }
}

// A round's prompt groups: a prompt-set round's, or the one prompt's images as a single group.
function groupsOf(s) {
  if (s.groups && s.groups.length) return s.groups;
  return [{ prompt: s.prompt, ids: s.image_ids, current_best: s.current_best }];
}

function startRound(s) {
  dropOldDrafts(s); // rounds before this one are submitted: their drafts are no longer needed
  cancelNumber();
  ui.round = s.round; ui.runId = s.run_id; ui.history = []; ui.armed = null; ui.focus = 0;
  ui.good = new Set();
  if (s.kind === "pairs") return Pairs.start(s);
  ui.groups = groupsOf(s);
  ui.groupOf = [];
  ui.groups.forEach((g, k) => g.ids.forEach((i) => { ui.groupOf[i] = k; }));
  ui.bests = ui.groups.map(() => null);
  try {
    const d = JSON.parse(localStorage.getItem(draftKey()) || "null");
    if (d) {
      ui.good = new Set(d.good.filter((i) => i < s.n_images));
      const saved = d.bests || [d.best]; // a draft from before prompt sets holds one best
      ui.bests = ui.groups.map((g, k) => (saved[k] === KEEP || g.ids.includes(saved[k])) ? saved[k] : null);
    }
  } catch (_) { /* no draft */ }
  ui.bests = ui.bests.map((b, k) => (b === KEEP && !ui.groups[k].current_best) ? null : b);
  buildGrid(s);
  $("num-rule").textContent = numberRule(s.n_images);
  say(ui.good.size ? "Your marks for this round were restored." : "");
  render();
  fit();
}

function buildGrid(s) {
  const grid = $("grid");
  grid.replaceChildren();
  grid.classList.remove("pairs");
  const several = ui.groups.length > 1;
  grid.classList.toggle("grouped", several);
  $("prompt").textContent = several ? `${ui.groups.length} prompts: a best for each` : s.prompt;
  ui.groups.forEach((g, k) => {
    if (several) { // a heading row: the group's prompt, over its images
      const head = document.createElement("h2");
      head.className = "group-head"; head.textContent = g.prompt;
      grid.append(head);
    }
    const best = several ? `/api/best/${s.round}/${k}` : `/api/best/${s.round}`;
    if (g.current_best) grid.append(cell(-(k + 1), best, "current", `Current best${several ? " for " + g.prompt : ""} (keep it with K)`));
    for (const i of g.ids) grid.append(cell(i, `/api/image/${s.round}/${i}`, String(i + 1), `Image ${i + 1}`));
  });
}

function tiles() { return [...$("grid").querySelectorAll(".tile")]; }
function groupOfCell(i) { return i < 0 ? -i - 1 : ui.groupOf[i]; }

function cell(i, src, label, alt) {
  const el = document.createElement("div");
  el.className = i < 0 ? "tile keep" : "tile";
  el.dataset.i = String(i);
  el.setAttribute("role", "checkbox");
  el.tabIndex = -1;
  const img = document.createElement("img");
  img.src = src; img.alt = alt; img.draggable = false;
  img.addEventListener("load", () => img.classList.toggle("px", img.naturalWidth < el.clientWidth));
  const num = document.createElement("span");
  num.className = "num"; num.textContent = label;
  const badge = document.createElement("span");
  badge.className = "badge";
  el.append(img, num, badge);
  el.addEventListener("click", (e) => {
    applyNumber(); // a digit still waiting is applied first: actions happen in the order they were made
    setFocus(i); i < 0 || e.shiftKey ? chooseBest(i) : toggleGood(i);
  });
  return el;
}

function snapshot() { ui.history.push({ good: new Set(ui.good), bests: [...ui.bests] }); ui.armed = null; }

function toggleGood(i) {
  if (i < 0) return chooseBest(i);
  snapshot();
  const g = groupOfCell(i);
  if (ui.good.has(i)) { ui.good.delete(i); if (ui.bests[g] === i) ui.bests[g] = null; } // the best is always good
  else ui.good.add(i);
  changed();
}

// The best of the cell's own prompt group (a prompt set has one best per prompt): an image, or KEEP.
function chooseBest(i) {
  snapshot();
  const g = groupOfCell(i), pick = i < 0 ? KEEP : i;
  ui.bests[g] = ui.bests[g] === pick ? null : pick;
  if (typeof ui.bests[g] === "number") ui.good.add(ui.bests[g]);
  changed();
}

function undo() {
  if (ui.state && ui.state.kind === "pairs") return Pairs.undo();
  applyNumber(); // a waiting digit counts as typed: undo takes it back
  const last = ui.history.pop();
  if (!last) return say("Nothing to undo.");
  ui.good = last.good; ui.bests = last.bests; ui.armed = null;
  changed();
}

function changed() {
  localStorage.setItem(draftKey(), JSON.stringify({ good: [...ui.good], bests: ui.bests }));
  say("");
  render();
}

function render() {
  const pending = ui.numBuf === "" ? null : Number(ui.numBuf) - 1;
  for (const el of tiles()) {
    const i = Number(el.dataset.i);
    el.classList.toggle("pending", i === pending);
    const best = ui.bests[groupOfCell(i)];
    const isBest = i < 0 ? best === KEEP : best === i;
    const isGood = i >= 0 && ui.good.has(i);
    el.classList.toggle("good", isGood);
    el.classList.toggle("best", isBest);
    el.setAttribute("aria-checked", String(isGood || isBest));
    el.querySelector(".badge").textContent = isBest ? "★ best" : isGood ? "✓" : "";
    el.setAttribute("aria-label", `${i < 0 ? "Current best" : "Image " + (i + 1)}: ${isBest ? "best" : isGood ? "good" : "not good"}`);
    el.tabIndex = i === ui.focus ? 0 : -1;
  }
  const n = ui.good.size;
  $("count-good").textContent = `${n} good of ${ui.state ? ui.state.n_images : 0}`;
  const one = ui.bests[0], chosen = ui.bests.filter((b) => b !== null).length;
  $("count-best").textContent = ui.bests.length > 1 ? `bests: ${chosen} of ${ui.bests.length} prompts` :
    one === null || one === undefined ? "no best yet" : one === KEEP ? "best: keep current" : `best: #${one + 1}`;
  $("count-best").classList.toggle("missing", chosen < ui.bests.length);
  $("undo").disabled = ui.history.length === 0;
}

function setFocus(i, move = false) {
  ui.focus = i;
  render();
  const el = $("grid").querySelector(`[data-i="${i}"]`);
  if (el && move) { el.focus({ preventScroll: false }); el.scrollIntoView({ block: "nearest" }); }
}

function say(text, kind = "") {
  $("message").textContent = text;
  $("message").className = "message " + kind;
}

// ---------------------------------------------------------------- submit

function problems() {
  const s = ui.state, n = s.n_images;
  const missing = ui.bests.findIndex((b) => b === null);
  if (missing >= 0) {
    const g = ui.groups[missing], where = ui.groups.length > 1 ? ` for “${g.prompt}”` : "";
    return { block: g.current_best ? `Choose one best image${where}, or keep the current best (K).` :
                                     `Choose one best image${where} (Shift+click, Shift+number or B).` };
  }
  if (ui.good.size === 0) return { warn: "No image is marked good. Press Enter again to submit anyway." };
  if (ui.good.size === n) return { warn: "Every image is marked good (HERO learns most from a mix). Press Enter again to submit anyway." };
  return {};
}

async function submit() {
  if (!ui.state || ui.state.phase !== "judging" || ui.sending) return;
  if (ui.state.kind === "pairs") return Pairs.submit();
  applyNumber(); // "1" then Enter at once: image 1 is marked, then the round goes
  const p = problems();
  if (p.block) return say(p.block, "error");
  const key = `${ui.round}:${[...ui.good].sort().join(",")}:${ui.bests.join(",")}`;
  if (p.warn && ui.armed !== key) { ui.armed = key; return say(p.warn, "warn"); }
  const good = [...ui.good].sort((a, b) => a - b), sent = ui.bests.map((b) => b === KEEP ? null : b);
  const body = ui.groups.length > 1 || (ui.state.groups && ui.state.groups.length) ?
    { round: ui.round, good, bests: sent } : { round: ui.round, good, best: sent[0] };
  return postRound("/api/submit", body, "marks");
}

// Send one round's judgements (good/best marks or pairwise choices); the draft is kept until the server has it.
async function postRound(path, body, what) {
  ui.sending = true; $("submit").disabled = true;
  try {
    const res = await api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify(body) });
    if (res.ok) {
      localStorage.removeItem(draftKey());
      say(`Round ${ui.round + 1} saved.`, "ok");
      // Until the next poll answers, the learning card must not show the previous round's texts.
      $("busy-message").textContent = `Round ${ui.round + 1} is saved.`;
      $("busy-time").textContent = "";
      ui.round = null;
      show("learning");
    } else {
      const error = (res.body && res.body.error) || `the server refused the submission (${res.status})`;
      say(error.charAt(0).toUpperCase() + error.slice(1) + (error.endsWith(".") ? "" : "."), "error");
    }
  } catch (_) {
    say(`Could not reach the server; your ${what} are kept. Try Enter again in a moment.`, "error");
  } finally {
    ui.sending = false; $("submit").disabled = false;
    poll();
  }
}

// ---------------------------------------------------------------- keyboard

// Number keys. The rule (also in the page's help line and docs/web.md): a digit selects its image at once unless
// a longer image number begins with it (with n images: 10 × the digits typed so far ≤ n). Then it waits NUM_WAIT
// ms, shown on screen, for the next digit; a next digit within the wait joins it when that image exists (16
// images: "1" then "2" is image 12), and otherwise the digits typed so far stand alone and the new digit starts
// anew ("1" then "7" is images 1 and 7). Esc drops a waiting digit; any other key or a click applies it first.
function typeDigit(d, shift) {
  const n = ui.state.n_images;
  if (ui.numBuf !== "" && Number(ui.numBuf + d) > n) applyNumber();
  if (ui.numBuf === "" && d === "0") return say("Image numbers start at 1: there is no image 0.", "error");
  ui.numShift = ui.numBuf === "" ? shift : ui.numShift || shift;
  ui.numBuf += d;
  clearTimeout(ui.numTimer);
  if (Number(ui.numBuf) * 10 > n) return applyNumber();
  ui.numTimer = setTimeout(applyNumber, NUM_WAIT);
  showPending(n);
}

// The rule above for this round's n, in the help line: which digits wait, and an example.
function numberRule(n) {
  if (n < 10) return "";
  const top = Math.min(9, Math.floor(n / 10)), wait = top === 1 ? "1 waits" : `1–${top} wait`;
  const example = Math.min(n, 12);
  return ` (${wait} ${NUM_WAIT / 1000} s for a 2nd digit: 1 ${example % 10} → ${example})`;
}

// The waiting digits, on screen: which image they select now, and which numbers a next digit would make.
function showPending(n) {
  const v = Number(ui.numBuf), lo = v * 10, hi = Math.min(n, lo + 9);
  $("pending-digits").textContent = ui.numBuf;
  const next = ui.numBuf.length === 1 ? "a second" : "another"; // "another": rounds of 100 images or more
  $("pending-text").textContent = `${ui.numShift ? "best: " : ""}image ${v}, or type ${next} digit for ` +
                                  (lo === hi ? `image ${lo}` : `${lo}–${hi}`);
  const bar = $("pending-bar"); // restart the countdown animation
  bar.style.animation = "none"; void bar.offsetWidth; bar.style.animation = "";
  bar.style.animationDuration = `${NUM_WAIT}ms`;
  $("pending").hidden = false;
  render();
}

function cancelNumber() {
  ui.numBuf = ""; clearTimeout(ui.numTimer);
  $("pending").hidden = true;
}

// Apply the waiting digits (if any) as one image number: toggle good, or best with Shift.
function applyNumber() {
  if (ui.numBuf === "") return;
  const v = Number(ui.numBuf), shift = ui.numShift;
  cancelNumber();
  if (!ui.state || ui.state.phase !== "judging" || ui.round === null) return; // the round is gone meanwhile
  const n = ui.state.n_images;
  if (!(v >= 1 && v <= n)) return say(`There is no image ${v} (1–${n}).`, "error");
  setFocus(v - 1, true);
  shift ? chooseBest(v - 1) : toggleGood(v - 1);
}

// K: keep the current best of the focused image's prompt (the round's one prompt, unless a prompt set).
function keepCurrentBest() {
  const g = groupOfCell(ui.focus) || 0;
  if (!ui.groups[g] || !ui.groups[g].current_best) {
    return say(ui.groups.length > 1 ? `There is no current best yet for “${ui.groups[g].prompt}”.` :
                                      "There is no current best yet in this round.", "error");
  }
  chooseBest(-(g + 1));
}

function columns() {
  return getComputedStyle($("grid")).gridTemplateColumns.split(" ").filter(Boolean).length || 1;
}

function moveFocus(dx, dy) {
  const cells = tiles().map((el) => Number(el.dataset.i));
  let pos = Math.max(0, cells.indexOf(ui.focus));
  pos = Math.min(cells.length - 1, Math.max(0, pos + dx + dy * columns()));
  setFocus(cells[pos], true);
}

function zoom(open) {
  const z = $("zoom");
  if (!open) { z.hidden = true; return; }
  const el = $("grid").querySelector(`[data-i="${ui.focus}"]`);
  if (!el) return;
  $("zoom-img").src = el.querySelector("img").src;
  $("zoom-caption").textContent = el.getAttribute("aria-label");
  z.hidden = false;
}

function onKey(e) {
  if (e.altKey || e.metaKey) return;
  if (!$("zoom").hidden && (e.key === "Escape" || e.key === "z" || e.key === "Z")) { zoom(false); return e.preventDefault(); }
  if (!ui.state || ui.state.phase !== "judging" || ui.round === null) return;
  if (ui.state.kind === "pairs") return Pairs.onKey(e);
  const digit = /^(Digit|Numpad)([0-9])$/.exec(e.code);
  if (digit && !e.ctrlKey) { typeDigit(digit[2], e.shiftKey); return e.preventDefault(); }
  const k = e.key.toLowerCase();
  if (k === "escape" && ui.numBuf !== "") {
    cancelNumber(); render(); say("Number dropped.");
    return e.preventDefault();
  }
  const actions = {
    enter: submit, " ": () => toggleGood(ui.focus), b: () => chooseBest(ui.focus), u: undo, backspace: undo,
    k: keepCurrentBest,
    z: () => zoom(true), arrowleft: () => moveFocus(-1, 0), arrowright: () => moveFocus(1, 0),
    arrowup: () => moveFocus(0, -1), arrowdown: () => moveFocus(0, 1),
  };
  if (e.ctrlKey && k === "z") { undo(); return e.preventDefault(); }
  if (e.ctrlKey || !(k in actions)) return; // a modifier alone (Shift before a second digit) keeps the wait
  if (e.target instanceof HTMLButtonElement && (k === "enter" || k === " ") && e.target.id !== "submit") return;
  e.preventDefault();
  applyNumber(); // a waiting digit is applied before the key's own action, in the order typed
  actions[k]();
}

// ---------------------------------------------------------------- layout: fit the whole round on screen

function fit() {
  if (ui.state && ui.state.kind === "pairs") return Pairs.fit();
  const grid = $("grid");
  const cells = tiles().length;
  if (!cells) return;
  const gap = 10;
  // A prompt set: each group starts a row of its own under a heading row (about HEAD px with its margins).
  const HEAD = 34, several = ui.groups.length > 1;
  const perGroup = several ? ui.groups.map((g) => g.ids.length + (g.current_best ? 1 : 0)) : [cells];
  const heads = several ? ui.groups.length : 0;
  const W = $("main").clientWidth - 32;
  const H = $("main").clientHeight - 30 - heads * (HEAD + gap);
  let best = { size: 0, cols: 1 };
  for (let cols = 1; cols <= cells; cols++) {
    const rows = perGroup.reduce((sum, k) => sum + Math.ceil(k / cols), 0);
    const size = Math.min((W - gap * (cols - 1)) / cols, (H - gap * (rows - 1)) / rows);
    if (size > best.size) best = { size, cols };
  }
  // Never smaller than judgeable (then the grid scrolls), never absurdly large. 64 tiles fit a 1366×768 laptop.
  const MIN = 80;
  const size = Math.floor(Math.max(MIN, Math.min(320, best.size)));
  const cols = Math.max(1, Math.min(cells, Math.floor((W + gap) / (size + gap))));
  grid.style.setProperty("--tile", `${size}px`);
  grid.style.setProperty("--cols", String(best.size >= MIN ? best.cols : cols));
}

document.addEventListener("keydown", onKey);
window.addEventListener("resize", fit);
$("undo").addEventListener("click", undo);
$("submit").addEventListener("click", submit);
$("zoom").addEventListener("click", () => zoom(false));
poll();
