// Dwell: how long a finished reply is actually on screen in a visible tab. Counted while at
// least half of the reply (or half of the viewport, for a tall one) is visible and the tab is
// visible; reported as increments, when the user acts (a new message, regenerate), when the tab
// hides, and on pagehide (the outbox carries that report to the next load).
const DWELL_MIN_MS = 200;
const thresholds = Array.from({ length: 21 }, (_, i) => i / 20);

export class Dwell {
  constructor(report) {
    this.report = report;     // (replyId, ms) => void
    this.items = new Map();   // key -> {replyId, acc, since, onScreen, reported}
    this.io = "IntersectionObserver" in window ? new IntersectionObserver((e) => this.seen(e), { threshold: thresholds }) : null;
    document.addEventListener("visibilitychange", () => {
      this.tickAll();
      if (document.visibilityState === "hidden") this.flush();
    });
    window.addEventListener("pagehide", () => {
      const now = performance.now();
      for (const d of this.items.values()) { this.tick(d, now); d.since = null; }
      this.flush();
    });
    window.addEventListener("pageshow", () => this.tickAll());   // back from the bfcache: resume
  }

  tick(d, now) {   // close the running interval, reopen it if still counting
    if (d.since != null) { d.acc += now - d.since; d.since = null; }
    if (d.onScreen && document.visibilityState === "visible") d.since = now;
  }

  tickAll() { const now = performance.now(); for (const d of this.items.values()) this.tick(d, now); }

  total(d, now) { return d.acc + (d.since != null ? now - d.since : 0); }

  seen(entries) {
    const now = performance.now();
    for (const e of entries) {
      const d = this.items.get(e.target.dataset.replyId);
      if (!d) continue;
      const fillsHalf = e.rootBounds && e.intersectionRect.height >= 0.5 * e.rootBounds.height;
      d.onScreen = e.isIntersecting && (e.intersectionRatio >= 0.5 || fillsHalf);
      this.tick(d, now);
    }
  }

  watch(replyId, el) {
    const key = String(replyId);
    if (this.items.has(key)) return;
    const d = { replyId, acc: 0, since: null, onScreen: !this.io, reported: 0 };
    this.items.set(key, d);
    if (this.io) this.io.observe(el); else this.tick(d, performance.now());
  }

  flush() {
    const now = performance.now();
    for (const d of this.items.values()) {
      const inc = Math.round(this.total(d, now) - d.reported);
      if (inc < DWELL_MIN_MS) continue;   // too short to mean anything; keep accumulating
      d.reported += inc;
      this.report(d.replyId, inc);
    }
  }

  visibleMs(replyId) {
    const d = this.items.get(String(replyId));
    return d ? Math.round(this.total(d, performance.now())) : 0;
  }

  clear() { this.flush(); if (this.io) this.io.disconnect(); this.items.clear(); }
}
