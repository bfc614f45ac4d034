// hero feedback page, pairwise mode (D3PO): the round's images come in pairs that share a starting noise; the
// person says which image of each pair is better, or "no preference". Uses app.js's helpers ($, ui, api, say,
// show, poll, draftKey); app.js hands a round over here when the server's state says kind === "pairs".
// Why every pair must be answered before Enter: the server counts a submitted round as all its images judged
// (one image = one feedback), so "no preference" is the honest answer for a pair the person cannot decide.
"use strict";

const Pairs = {
  pairs: [],       // [[i, j], ...] as the server lists them: i is shown left, j right
  choice: [],      // per pair: "L", "R", "T" (no preference) or null
  history: [],     // undo stack of {choice, focus}
  focus: 0,        // focused pair

  start(s) {
    this.pairs = s.pairs; this.history = []; this.focus = 0;
    this.choice = s.pairs.map(() => null);
    try {
      const d = JSON.parse(localStorage.getItem(draftKey()) || "null");
      if (d && Array.isArray(d.pairs) && d.pairs.length === s.pairs.length) this.choice = d.pairs;
    } catch (_) { /* no draft */ }
    this.build(s);
    this.focus = Math.max(0, this.choice.indexOf(null));
    say(this.answered() ? "Your choices for this round were restored." : "");
    this.render();
    this.fit();
  },

  build(s) {
    const grid = $("grid");
    grid.replaceChildren();
    grid.classList.add("pairs"); grid.classList.remove("grouped");
    grid.setAttribute("aria-label", "Pairs of images: choose the better image of each pair");
    this.pairs.forEach(([i, j], p) => {
      const card = document.createElement("div");
      card.className = "pair"; card.dataset.p = String(p);
      card.setAttribute("role", "radiogroup"); card.setAttribute("aria-label", `Pair ${p + 1}`);
      const title = document.createElement("div");
      title.className = "pair-title"; title.textContent = `Pair ${p + 1}`;
      const tiles = document.createElement("div");
      tiles.className = "pair-tiles";
      tiles.append(this.tile(p, i, "L", s.round), this.tile(p, j, "R", s.round));
      const tie = document.createElement("button");
      tie.type = "button"; tie.className = "tie"; tie.textContent = "No preference";
      tie.title = "No preference (0 or T)";
      tie.addEventListener("click", () => this.choose(p, "T"));
      card.append(title, tiles, tie);
      grid.append(card);
    });
  },

  tile(p, i, side, round) {
    const el = document.createElement("div");
    el.className = "tile"; el.dataset.i = String(i); el.dataset.side = side;
    el.setAttribute("role", "radio");
    const img = document.createElement("img");
    img.src = `/api/image/${round}/${i}`; img.alt = `Image ${i + 1}`; img.draggable = false;
    img.addEventListener("load", () => img.classList.toggle("px", img.naturalWidth < el.clientWidth));
    const num = document.createElement("span");
    num.className = "num"; num.textContent = side === "L" ? "1 ←" : "2 →";
    const badge = document.createElement("span");
    badge.className = "badge";
    el.append(img, num, badge);
    el.addEventListener("click", () => this.choose(p, side));
    return el;
  },

  // Choosing the pair's current answer again clears it; a new answer moves on to the next unanswered pair.
  choose(p, value) {
    this.history.push({ choice: [...this.choice], focus: this.focus });
    const clear = this.choice[p] === value;
    this.choice[p] = clear ? null : value;
    this.focus = p;
    if (!clear) {
      const next = this.choice.findIndex((c, k) => c === null && k > p);
      const any = this.choice.indexOf(null);
      this.focus = next >= 0 ? next : any >= 0 ? any : p;
    }
    this.changed();
  },

  undo() {
    const last = this.history.pop();
    if (!last) return say("Nothing to undo.");
    this.choice = last.choice; this.focus = last.focus;
    this.changed();
  },

  changed() {
    localStorage.setItem(draftKey(), JSON.stringify({ pairs: this.choice }));
    say("");
    this.render(true);
  },

  answered() { return this.choice.filter((c) => c !== null).length; },

  render(scroll = false) {
    for (const card of $("grid").children) {
      const p = Number(card.dataset.p), c = this.choice[p];
      card.classList.toggle("focus", p === this.focus);
      card.classList.toggle("tie", c === "T");
      card.classList.toggle("answered", c !== null);
      card.querySelector(".tie").classList.toggle("on", c === "T");
      card.querySelector(".tie").setAttribute("aria-pressed", String(c === "T"));
      for (const el of card.querySelectorAll(".tile")) {
        const side = el.dataset.side, win = c === side, lose = c !== null && c !== "T" && !win;
        el.classList.toggle("win", win);
        el.classList.toggle("lose", lose);
        el.setAttribute("aria-checked", String(win));
        el.querySelector(".badge").textContent = win ? "✓ better" : c === "T" ? "=" : "";
        el.setAttribute("aria-label", `Image ${Number(el.dataset.i) + 1}: ${win ? "better" : lose ? "worse" :
          c === "T" ? "no preference" : "not chosen"}`);
      }
      if (scroll && p === this.focus) card.scrollIntoView({ block: "nearest" });
    }
    const n = this.answered(), total = this.pairs.length;
    $("count-good").textContent = `${n} of ${total} pairs answered`;
    $("count-best").textContent = `${2 * n} of ${ui.state ? ui.state.n_images : 2 * total} images judged`;
    $("count-best").classList.toggle("missing", n < total);
    $("undo").disabled = this.history.length === 0;
  },

  async submit() {
    if (ui.sending) return;
    const missing = this.choice.indexOf(null);
    if (missing >= 0) {
      this.focus = missing; this.render(true);
      return say(`Pair ${missing + 1} has no answer yet: ← or 1 (left), → or 2 (right), 0 or T (no preference).`,
                 "error");
    }
    const winners = [], ties = [];
    this.pairs.forEach(([i, j], p) => {
      const c = this.choice[p];
      if (c === "T") ties.push([i, j]); else winners.push(c === "L" ? [i, j] : [j, i]);
    });
    return postRound("/api/submit-pairs", { round: ui.round, winners, ties }, "choices");
  },

  onKey(e) {
    const k = e.key.toLowerCase();
    if ((e.ctrlKey && k === "z") || (!e.ctrlKey && (k === "u" || k === "backspace"))) {
      e.preventDefault(); return this.undo();
    }
    if (e.ctrlKey) return;
    if (e.target instanceof HTMLButtonElement && (k === "enter" || k === " ") && e.target.id !== "submit") return;
    const n = this.pairs.length;
    const actions = {
      enter: () => this.submit(), arrowleft: () => this.choose(this.focus, "L"), 1: () => this.choose(this.focus, "L"),
      arrowright: () => this.choose(this.focus, "R"), 2: () => this.choose(this.focus, "R"),
      0: () => this.choose(this.focus, "T"), t: () => this.choose(this.focus, "T"), "=": () => this.choose(this.focus, "T"),
      arrowdown: () => { this.focus = Math.min(n - 1, this.focus + 1); this.render(true); },
      arrowup: () => { this.focus = Math.max(0, this.focus - 1); this.render(true); },
    };
    const digit = /^(Digit|Numpad)([0-2])$/.exec(e.code);
    const key = digit ? digit[2] : k;
    if (!(key in actions)) return;
    e.preventDefault();
    actions[key]();
  },

  // Lay the pair cards out so that the whole round fits on screen, each image as large as possible; below a
  // judgeable size the cards keep that size in as many columns as the width takes, and the page scrolls.
  fit() {
    const grid = $("grid"), cards = grid.children.length;
    if (!cards) return;
    const gap = 14, padW = 32, padH = 64; // a card's padding, border, gap between its images; title; tie button
    const W = $("main").clientWidth - 32, H = $("main").clientHeight - 30;
    let best = { size: 0, cols: 1 };
    for (let cols = 1; cols <= cards; cols++) {
      const rows = Math.ceil(cards / cols);
      const size = Math.min(((W - gap * (cols - 1)) / cols - padW) / 2, (H - gap * (rows - 1)) / rows - padH);
      if (size > best.size) best = { size, cols };
    }
    const MIN = 60; // 32 pairs (64 images) then fit a 1366×768 laptop screen without scrolling
    const size = Math.floor(Math.max(MIN, Math.min(320, best.size)));
    const fitCols = Math.max(1, Math.min(cards, Math.floor((W + gap) / (2 * size + padW + gap))));
    grid.style.setProperty("--tile", `${size}px`);
    grid.style.setProperty("--cols", String(best.size >= MIN ? best.cols : fitCols));
  },
};
