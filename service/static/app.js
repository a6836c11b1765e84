// rewardloop chat page: streaming chat over /ws/chat plus the feedback that trains the model.
// Plain script, no build step, no external requests. Model text only ever goes in as text nodes.
"use strict";
(() => {
  const LS = { token: "rl_token", session: "rl_session", outbox: "rl_outbox" };
  const BACKOFF_MIN = 500, BACKOFF_MAX = 5000, DWELL_MIN_MS = 200;
  const $ = (sel) => document.querySelector(sel);
  const ui = {
    transcript: $("#transcript"), empty: $("#empty"), composer: $("#composer"), input: $("#input"),
    stop: $("#stop"), status: $("[data-testid=status]"), compare: $("#compare"),
    newChat: $("#new-chat"), toasts: $("#toasts"),
  };

  // ---------- small helpers ----------
  // localStorage can throw (privacy modes, quota); fall back to memory so the page still works.
  const mem = {};
  const lsGet = (k) => { try { return localStorage.getItem(k); } catch { return k in mem ? mem[k] : null; } };
  const lsSet = (k, v) => { try { localStorage.setItem(k, v); } catch { mem[k] = v; } };
  const lsDel = (k) => { try { localStorage.removeItem(k); } catch { delete mem[k]; } };

  // crypto.randomUUID only exists in secure contexts; plain http on a LAN address must work too.
  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const x = Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
    return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }

  function h(tag, attrs = {}, text) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text != null) el.textContent = text;
    return el;
  }

  function toast(message, kind = "error") {
    const t = h("div", { class: `toast ${kind}`, "data-testid": "toast", role: "alert" }, message);
    ui.toasts.append(t);
    setTimeout(() => t.remove(), 6000);
  }

  function setStatus(state) { ui.status.textContent = state; ui.status.dataset.state = state; }
  const setPressed = (btn, on) => btn.setAttribute("aria-pressed", on ? "true" : "false");

  // Keep following the stream only if the reader is already at the bottom.
  function keepScroll(fn) {
    const t = ui.transcript;
    const pinned = t.scrollHeight - t.scrollTop - t.clientHeight < 80;
    fn();
    if (pinned) t.scrollTop = t.scrollHeight;
  }

  // ---------- identity ----------
  let sessionId = lsGet(LS.session);

  // A session belongs to one user: a different token means the stored session is not ours.
  function setToken(t) {
    if (lsGet(LS.token) === t) return;
    lsSet(LS.token, t);
    lsDel(LS.session); sessionId = null;
  }

  async function ensureToken() {
    const have = lsGet(LS.token);
    if (have) return have;
    const r = await fetch("/api/session", { method: "POST" });
    if (!r.ok) throw new Error(`POST /api/session answered ${r.status}`);
    const j = await r.json();
    if (!j || !j.token) throw new Error("POST /api/session returned no token");
    setToken(j.token);
    return j.token;
  }

  { // ?token= wins over storage; strip it from the address bar so it is not bookmarked or shared.
    const url = new URL(location.href);
    const t = url.searchParams.get("token");
    if (t) {
      setToken(t);
      url.searchParams.delete("token");
      history.replaceState(history.state, "", url);
    }
  }

  // ---------- outbox: feedback survives drops and reloads until the server acks it ----------
  function outboxRead() {
    try { const o = JSON.parse(lsGet(LS.outbox) || "{}"); return o && typeof o === "object" ? o : {}; }
    catch { return {}; }
  }
  const outboxWrite = (o) => lsSet(LS.outbox, JSON.stringify(o));
  // Re-read on every change: another tab may share the same outbox.
  function outboxRemove(id) {
    const o = outboxRead();
    if (!(id in o)) return false;
    delete o[id]; outboxWrite(o);
    return true;
  }

  function sendFeedback(replyId, kind, value) {
    const f = { type: "feedback", feedback_id: uuid(), reply_id: replyId, kind, client_time: Date.now() };
    if (value !== undefined) f.value = value;
    const o = outboxRead(); o[f.feedback_id] = f; outboxWrite(o);  // store first, then send
    sendFrame(f);
    return f;
  }

  // ---------- connection (explicit states: connecting → ready → closed → reconnect) ----------
  let conn = null;          // {sock, ready, helloSession}
  let connGen = 0, everReady = false, backoff = BACKOFF_MIN, retryTimer = null, helloFailures = 0;
  const pending = [];       // user_message frames waiting for `ready`

  function sendFrame(frame) {
    if (!conn || !conn.ready || conn.sock.readyState !== WebSocket.OPEN) return false;
    conn.sock.send(JSON.stringify(frame));
    return true;
  }

  async function connect() {
    clearTimeout(retryTimer); retryTimer = null;
    const gen = ++connGen;
    setStatus(everReady ? "reconnecting" : "connecting");
    let token;
    try { token = await ensureToken(); }
    catch (e) { console.warn("rewardloop:", e); if (gen === connGen) scheduleReconnect(); return; }
    if (gen !== connGen) return;  // a newer connect() superseded this one while we waited
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const c = { sock: new WebSocket(`${scheme}//${location.host}/ws/chat`), ready: false, helloSession: null };
    conn = c;
    c.sock.onopen = () => {
      const hello = { type: "hello", token };
      if (sessionId) hello.session_id = c.helloSession = sessionId;  // resume after a reload
      c.sock.send(JSON.stringify(hello));
    };
    c.sock.onmessage = (ev) => { if (conn === c) onFrame(ev.data); };
    c.sock.onclose = (ev) => { if (conn === c) onClose(c, ev); };
    c.sock.onerror = () => {};  // a close event always follows; handled there
  }

  function onClose(c, ev) {
    conn = null;
    interruptStreams();
    if (ev.code === 4401) {
      lsDel(LS.token);  // bad token: the next connect() asks /api/session for a fresh one
    } else if (!c.ready && c.helloSession && ++helloFailures >= 2) {
      // Twice refused while resuming: the stored session is probably gone; start a new one.
      lsDel(LS.session); sessionId = null; helloFailures = 0;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    setStatus(everReady ? "reconnecting" : "connecting");
    if (retryTimer) return;
    const delay = Math.min(BACKOFF_MAX, backoff * (0.8 + 0.4 * Math.random()));  // jitter: no herd
    backoff = Math.min(BACKOFF_MAX, backoff * 2);
    retryTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    const old = conn; conn = null;
    if (old) old.sock.close(1000, "client reconnect");
    backoff = BACKOFF_MIN;
    connect();
  }

  function onFrame(raw) {
    let m;
    try { m = JSON.parse(raw); } catch { toast("The server sent a frame that is not JSON."); return; }
    switch (m.type) {
      case "ready": return onReady(m);
      case "reply_start": return onReplyStart(m);
      case "token": return onToken(m);
      case "reply_end": return onReplyEnd(m);
      case "ack": return void outboxRemove(m.feedback_id);
      case "error": return onServerError(m);
      default: console.debug("rewardloop: ignoring frame type", m.type);
    }
  }

  function onReady(m) {
    conn.ready = true; everReady = true; backoff = BACKOFF_MIN; helloFailures = 0;
    if (m.session_id) { sessionId = String(m.session_id); lsSet(LS.session, sessionId); }
    setStatus("connected");
    ui.status.title = "";
    for (const f of Object.values(outboxRead())) sendFrame(f);  // same feedback_id: server dedups
    flushPending();
  }

  function onServerError(m) {
    if (!conn.ready && (m.code === "unauthorized" || m.code === "not_ready")) {
      // Recovered by the close that follows (4401: new token; 1013: retry later): no toast.
      ui.status.title = m.message || m.code;
      return;
    }
    if (m.ref != null && (m.code === "unavailable" || m.code === "rate_limited")) {
      // Not judged, only not stored yet: keep it in the outbox and send it again shortly.
      const frame = outboxRead()[m.ref];
      if (frame) setTimeout(() => sendFrame(frame), m.code === "unavailable" ? 2000 : 1000);
    } else if (m.ref != null) {
      outboxRemove(m.ref);  // the server has judged this feedback; retrying would not help
      const bubble = userBubbles.get(m.ref);
      if (bubble) bubble.classList.add("failed");
    }
    toast(m.message || `Server error: ${m.code || "unknown"}`);
  }

  // ---------- sending ----------
  const userBubbles = new Map();  // client_msg_id → element, so an error can mark its message

  function flushPending() {
    while (pending.length && conn && conn.ready) {
      const { frame, el } = pending[0];
      if (sessionId) frame.session_id = sessionId;
      if (!sendFrame(frame)) break;
      pending.shift();
      el.classList.remove("queued");
    }
  }

  function sendUserMessage(text) {
    flushDwell();  // what was read before this message counts toward the previous replies
    const frame = { type: "user_message", text, client_msg_id: uuid() };
    if (ui.compare.checked) frame.candidates = 2;
    const el = h("div", { class: "msg user queued", "data-client-msg-id": frame.client_msg_id });
    el.append(h("div", { class: "bubble" }, text));
    const row = h("div", { class: "row user-row", "data-turn": String(++turnSeq) });
    row.append(el);
    ui.empty.hidden = true;
    ui.transcript.append(row);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
    userBubbles.set(frame.client_msg_id, el);
    pending.push({ frame, el });
    flushPending();
  }

  function submit() {
    const text = ui.input.value.trim();
    if (!text) return;
    ui.input.value = "";
    autosize();
    sendUserMessage(text);
  }

  function stopAll() {
    for (const id of streaming) sendFrame({ type: "stop", reply_id: replies.get(id).id });
  }

  // ---------- replies ----------
  const replies = new Map();   // String(reply_id) → reply state
  const streaming = new Set(); // keys of replies still receiving tokens
  let turnSeq = 0;

  function newReply(id) {
    const el = h("article", { class: "msg assistant waiting", "data-reply-id": String(id) });
    const meta = h("div", { class: "meta" });
    const version = h("span", { class: "tag", "data-testid": "version", title: "adapter version that wrote this reply" });
    meta.append(version);
    const text = h("div", { class: "reply-text", "data-testid": "reply-text" });
    const node = document.createTextNode("");
    text.append(node);
    const bubble = h("div", { class: "bubble" });
    bubble.append(text);
    const endNote = h("div", { class: "end-note" });
    el.append(meta, bubble, endNote);
    const r = { id, key: String(id), el, meta, version, node, endNote, state: "waiting", row: null, other: null, btn: {} };
    replies.set(r.key, r);
    return r;
  }

  // Regenerations go right after the reply they replace (after earlier regenerations of it).
  function placeRow(row, replaces) {
    const old = replaces != null ? replies.get(String(replaces)) : null;
    ui.empty.hidden = true;
    if (!old) { row.dataset.turn = String(++turnSeq); ui.transcript.append(row); return; }
    const turn = old.row.dataset.turn;
    row.dataset.turn = turn;
    let after = old.row;
    while (after.nextElementSibling && after.nextElementSibling.dataset.turn === turn) after = after.nextElementSibling;
    after.after(row);
  }

  function markReplaced(id) {
    const old = replies.get(String(id));
    if (!old || old.el.classList.contains("replaced")) return;
    old.el.classList.add("replaced");
    old.el.dataset.replaced = "true";
    old.meta.append(h("span", { class: "tag regenerated", "data-testid": "regenerated" }, "regenerated"));
  }

  function onReplyStart(m) {
    const key = String(m.reply_id);
    keepScroll(() => {
      let r = replies.get(key);
      if (!r) {
        const cands = Array.isArray(m.candidates) && m.candidates.length === 2 ? m.candidates : null;
        if (cands && cands.map(String).includes(key)) {
          // Both columns exist from the first reply_start, so either order or interleaving works.
          const row = h("div", { class: "row pair" });
          row.append(h("div", { class: "pair-label" }, "Two candidate replies — which one is better?"));
          const cols = h("div", { class: "pair-cols" });
          const [a, b] = cands.map((c) => replies.get(String(c)) || newReply(c));
          a.other = b; b.other = a;
          for (const x of [a, b]) { x.row = row; cols.append(x.el); streaming.add(x.key); }  // both open
          row.append(cols);
          placeRow(row, m.replaces);
          r = replies.get(key);
        } else {
          r = newReply(m.reply_id);
          r.row = h("div", { class: "row assistant-row" });
          r.row.append(r.el);
          placeRow(r.row, m.replaces);
        }
      } else if (r.state !== "waiting") {
        r.node.data = "";  // the server restarted this reply: show it once, not twice
      }
      r.state = "streaming";
      r.el.classList.remove("waiting", "interrupted");
      r.el.classList.add("streaming");
      r.version.textContent = m.adapter_version != null ? String(m.adapter_version) : "?";
      if (m.history_truncated && !r.meta.querySelector(".truncated")) {
        r.meta.append(h("span", { class: "note truncated", "data-testid": "truncated" },
          "older turns were dropped to fit the context"));
      }
      streaming.add(r.key);
    });
    if (m.replaces != null) markReplaced(m.replaces);
    updateStop();
  }

  function onToken(m) {
    const r = replies.get(String(m.reply_id));
    if (!r || r.state === "done") return;
    if (r.state === "waiting") { r.state = "streaming"; r.el.classList.replace("waiting", "streaming"); streaming.add(r.key); updateStop(); }
    keepScroll(() => r.node.appendData(String(m.text ?? "")));
  }

  const FINISH_NOTES = { length: "cut off at the length limit", cancelled: "stopped", error: "generation failed" };

  function onReplyEnd(m) {
    const r = replies.get(String(m.reply_id));
    if (!r || r.state === "done") return;
    streaming.delete(r.key);
    updateStop();
    keepScroll(() => {
      r.state = "done";
      r.el.classList.remove("streaming", "waiting", "interrupted");
      r.el.classList.add("done");
      r.el.dataset.finishReason = m.finish_reason || "stop";
      r.endNote.textContent = FINISH_NOTES[m.finish_reason] || "";
      if (m.n_tokens != null) r.meta.title = `${m.n_tokens} tokens`;
      if (!r.bar) r.el.append(feedbackBar(r));
    });
    watchDwell(r);
  }

  // A dropped socket ends every open stream: no reply_end will come for them on this connection.
  function interruptStreams() {
    for (const r of replies.values()) {
      if (r.state !== "streaming" && r.state !== "waiting") continue;
      r.state = "interrupted";
      r.el.classList.remove("streaming", "waiting");
      r.el.classList.add("interrupted");
      r.endNote.textContent = "connection lost before the reply finished";
    }
    streaming.clear();
    updateStop();
  }

  function updateStop() { ui.stop.hidden = streaming.size === 0; }

  // ---------- feedback bar ----------
  // Icon-only buttons (thumbs, stars) get an aria-label; worded buttons keep their visible name.
  function fbButton(label, testid, title, toggle, icon = false) {
    const b = h("button", { type: "button", class: "fb", "data-testid": testid, title }, label);
    if (icon) b.setAttribute("aria-label", title);
    if (toggle) setPressed(b, false);
    return b;
  }

  function feedbackBar(r) {
    const bar = h("div", { class: "feedback", role: "group", "aria-label": "Feedback on this reply" });
    const up = fbButton("👍", "thumb-up", "Good reply", true, true);
    const down = fbButton("👎", "thumb-down", "Bad reply", true, true);
    // Every click is its own event; the pressed state just mirrors the latest one.
    up.onclick = () => { sendFeedback(r.id, "thumbs", 1); setPressed(up, true); setPressed(down, false); };
    down.onclick = () => { sendFeedback(r.id, "thumbs", -1); setPressed(down, true); setPressed(up, false); };

    const stars = h("span", { class: "stars", role: "group", "aria-label": "Rate this reply from 1 to 5" });
    const starBtns = [1, 2, 3, 4, 5].map((n) => {
      const s = fbButton("★", `star-${n}`, `${n} star${n > 1 ? "s" : ""}`, true, true);
      s.classList.add("star");
      s.onclick = () => {
        sendFeedback(r.id, "rating", n);
        starBtns.forEach((x, i) => { x.classList.toggle("filled", i < n); setPressed(x, i + 1 === n); });
      };
      return s;
    });
    stars.append(...starBtns);

    const copy = fbButton("Copy", "copy", "Copy reply text", false);
    copy.onclick = async () => {
      sendFeedback(r.id, "copy");  // the intent is the signal, whether or not the clipboard allows it
      try { await navigator.clipboard.writeText(r.node.data); flash(copy, "Copied"); }
      catch { flash(copy, "Copy blocked"); }
    };

    const regen = fbButton("Regenerate", "regenerate", "Ask for a different reply", false);
    regen.onclick = () => { flushDwell(); sendFeedback(r.id, "regenerate"); };

    bar.append(up, down, stars, copy, regen);
    if (r.other) {
      const choose = fbButton("This one is better", "choose", "Prefer this candidate over the other", true);
      choose.classList.add("choose");
      choose.onclick = () => pick(r);
      r.btn.choose = choose;
      bar.append(choose);
    }
    r.bar = bar;
    return bar;
  }

  function pick(r) {
    sendFeedback(r.id, "choose", r.other.id);
    r.el.classList.add("chosen"); r.el.classList.remove("dimmed");
    r.other.el.classList.add("dimmed"); r.other.el.classList.remove("chosen");
    setPressed(r.btn.choose, true);
    if (r.other.btn.choose) setPressed(r.other.btn.choose, false);
  }

  function flash(btn, text) {
    const old = btn.dataset.label || btn.textContent;
    btn.dataset.label = old;
    btn.textContent = text;
    setTimeout(() => { btn.textContent = old; }, 1200);
  }

  // Copying by selection is the same signal as the Copy button.
  document.addEventListener("copy", () => {
    const sel = getSelection();
    if (!sel || sel.isCollapsed || !sel.anchorNode) return;
    const node = sel.anchorNode.nodeType === 1 ? sel.anchorNode : sel.anchorNode.parentElement;
    const el = node && node.closest("[data-reply-id]");
    const r = el && replies.get(el.dataset.replyId);
    if (r && r.state === "done") sendFeedback(r.id, "copy");
  });

  // ---------- dwell: time a finished reply is actually on screen in a visible tab ----------
  const dwell = new Map();  // key → {replyId, acc, since, onScreen, reported}
  // Extra thresholds so a reply taller than the viewport still counts once it fills half of it.
  const thresholds = Array.from({ length: 21 }, (_, i) => i / 20);
  const io = "IntersectionObserver" in window ? new IntersectionObserver(onIntersect, { threshold: thresholds }) : null;

  function tick(d, now) {  // close the running interval, reopen it if still counting
    if (d.since != null) { d.acc += now - d.since; d.since = null; }
    if (d.onScreen && document.visibilityState === "visible") d.since = now;
  }
  const total = (d, now) => d.acc + (d.since != null ? now - d.since : 0);

  function onIntersect(entries) {
    const now = performance.now();
    for (const e of entries) {
      const d = dwell.get(e.target.dataset.replyId);
      if (!d) continue;
      const fillsHalf = e.rootBounds && e.intersectionRect.height >= 0.5 * e.rootBounds.height;
      d.onScreen = e.isIntersecting && (e.intersectionRatio >= 0.5 || fillsHalf);
      tick(d, now);
    }
  }

  function watchDwell(r) {
    if (dwell.has(r.key)) return;
    const d = { replyId: r.id, acc: 0, since: null, onScreen: !io, reported: 0 };
    dwell.set(r.key, d);
    if (io) io.observe(r.el); else tick(d, performance.now());
  }

  function flushDwell() {
    const now = performance.now();
    for (const d of dwell.values()) {
      const inc = Math.round(total(d, now) - d.reported);
      if (inc < DWELL_MIN_MS) continue;  // too short to mean anything; keep accumulating
      d.reported += inc;
      sendFeedback(d.replyId, "dwell", inc);
    }
  }

  document.addEventListener("visibilitychange", () => {
    const now = performance.now();
    for (const d of dwell.values()) tick(d, now);
    if (document.visibilityState === "hidden") flushDwell();
  });
  // The socket may already be gone on pagehide; the outbox carries the report to the next load.
  window.addEventListener("pagehide", () => {
    const now = performance.now();
    for (const d of dwell.values()) { tick(d, now); d.since = null; }
    flushDwell();
  });
  window.addEventListener("pageshow", () => {  // back from the bfcache: resume counting
    const now = performance.now();
    for (const d of dwell.values()) tick(d, now);
  });

  // ---------- page wiring ----------
  function newChat() {
    flushDwell();
    stopAll();
    if (io) io.disconnect();
    dwell.clear(); replies.clear(); streaming.clear(); userBubbles.clear();
    pending.length = 0;
    updateStop();
    ui.transcript.replaceChildren(ui.empty);
    ui.empty.hidden = false;
    lsDel(LS.session); sessionId = null;
    reconnectNow();  // a hello without session_id makes the server open a new session
  }

  function autosize() {
    ui.input.style.height = "auto";
    ui.input.style.height = `${ui.input.scrollHeight}px`;
  }

  ui.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); submit(); }
    else if (e.key === "Escape" && streaming.size) stopAll();
  });
  ui.input.addEventListener("input", autosize);
  ui.composer.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  ui.stop.addEventListener("click", stopAll);
  ui.newChat.addEventListener("click", newChat);
  window.addEventListener("online", () => { if (!conn && retryTimer) connect(); });

  // Test and debugging hooks (browser tests rely on these names).
  window.rl = {
    get socket() { return conn ? conn.sock : null; },
    outbox: () => outboxRead(),
    sessionId: () => sessionId,
  };
  window.rlDwell = (replyId) => {
    const d = dwell.get(String(replyId));
    return d ? Math.round(total(d, performance.now())) : 0;
  };
  window.rlFlushDwell = flushDwell;

  connect();
})();
