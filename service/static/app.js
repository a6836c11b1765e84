// rewardloop chat page: streaming chat over /ws/chat, conversations that last, and the feedback
// that trains the model. ES modules, no build step, no external requests (js/*.js, vendor/).
import { $, setPressed, toast } from "./js/dom.js";
import { identity, api, uuid } from "./js/state.js";
import { Connection } from "./js/connection.js";
import { Outbox, remove as outboxRemove, read as outboxRead } from "./js/outbox.js";
import { Tree } from "./js/tree.js";
import { Transcript } from "./js/transcript.js";
import { feedbackBar, applyState } from "./js/feedback.js";
import { Dwell } from "./js/dwell.js";
import { SessionsPanel } from "./js/sessions.js";

const ui = {
  transcript: $("#transcript"), empty: $("#empty"), composer: $("#composer"), input: $("#input"), send: $("#send"),
  stop: $("#stop"), status: $("[data-testid=status]"), compare: $("#compare"), toasts: $("#toasts"), live: $("#live"),
};
const say = (message, kind) => toast(ui.toasts, message, kind);
const streaming = new Set();   // reply ids still receiving tokens
let restoring = Promise.resolve();
let wantSelect = null;         // a branch switch made while offline: told to the server on ready

const conn = new Connection({ onFrame, onReady, onStatus: setStatus, onDrop: interruptStreams });
const outbox = new Outbox(conn);
const dwell = new Dwell((replyId, ms) => outbox.send(replyId, "dwell", ms));
let tree = new Tree();
const transcript = new Transcript(ui.transcript, ui.empty, tree, {
  navigate, edit: (r, text) => sendMessage(text, { parentId: r.parentId, editOf: r.id }),
  copyCode: (r, code, btn) => copyText(r, code, btn, "Copied"), bar: (r) => feedbackBar(r, actions(r)),
});
const sessions = new SessionsPanel({ list: $("#conversations"), search: $("#search"), dialog: $("#delete-dialog") }, {
  open: openConversation, deleted: (id) => { if (id === identity.sessionId) newChat(); },
  current: () => identity.sessionId, toast: say,
});

function setStatus(state, detail) {
  ui.status.textContent = state; ui.status.dataset.state = state; ui.status.title = detail || "";
}

// ---------- frames ----------
function onFrame(m) {
  switch (m.type) {
    case "reply_start": return onReplyStart(m);
    case "token": return onToken(m);
    case "reply_end": return onReplyEnd(m);
    case "ack": return void outboxRemove(m.feedback_id);
    case "error": return onServerError(m);
    default: return undefined;   // queued, selected: nothing to show
  }
}

function onReady(m, resumed) {
  if (!resumed) resetView();   // the stored conversation is gone (or not ours): a new one
  outbox.resend();             // same feedback_id: the server stores each once
  if (wantSelect) { conn.send({ type: "select", reply_id: wantSelect }); wantSelect = null; }
  flushPending();
}

function onServerError(m) {
  if (m.ref != null && (m.code === "unavailable" || m.code === "rate_limited") && outboxRead()[m.ref]) {
    outbox.retry(m.ref, m.code === "unavailable" ? 2000 : 1000);   // not judged, only not stored yet
  } else if (m.ref != null && outboxRemove(m.ref)) {
    // the server judged this feedback; retrying would not help
  } else if (m.ref != null && transcript.pending && transcript.pending.msgId === m.ref) {
    transcript.pending.failed = true;
    transcript.pending.el.classList.add("failed");
    updateBusy();
  }
  say(m.message || `Server error: ${m.code || "unknown"}`);
}

function newReply(id, base) {
  return tree.add({ id, parentId: base.parentId, msgId: base.msgId, userText: base.userText, candidates: null, feedback: {}, state: "waiting" });
}

function onReplyStart(m) {
  let r = tree.get(m.reply_id);
  if (!r) {
    const p = transcript.pending && transcript.pending.msgId === m.client_msg_id ? transcript.pending : null;
    const old = m.replaces != null ? tree.get(m.replaces) : null;
    const base = { parentId: m.parent_id ?? (p ? p.parentId : old ? old.parentId : ""), msgId: m.client_msg_id || (old && old.msgId) || m.reply_id,
      userText: p ? p.text : old ? old.userText : "" };
    const cands = Array.isArray(m.candidates) && m.candidates.length === 2 ? m.candidates.map(String) : null;
    for (const id of cands || [m.reply_id]) (tree.get(id) || newReply(id, base)).candidates = cands;
    r = tree.get(m.reply_id);
    for (const id of cands || []) streaming.add(id);   // both columns are open until both end
    if (p) transcript.pending = null;
    transcript.render([...tree.branchTo(r.parentId), cands ? cands[0] : r.id]);
    transcript.toBottom();
  } else if (r.state !== "waiting") {
    r.renderer.reset();   // the server restarted this reply: show it once, not twice
  }
  transcript.start(r, m);
  streaming.add(r.id);
  updateBusy();
}

function onToken(m) {
  const r = tree.get(m.reply_id);
  if (!r || r.state === "done") return;
  if (r.state === "waiting") { transcript.start(r, m); streaming.add(r.id); updateBusy(); }
  r.renderer.append(String(m.text ?? ""));
}

function onReplyEnd(m) {
  const r = tree.get(m.reply_id);
  if (!r || r.state === "done") return;
  streaming.delete(r.id);
  transcript.end(r, m.finish_reason, m.n_tokens);
  r.text = r.renderer.source;
  dwell.watch(r.id, r.ui.el);
  updateBusy();
  ui.live.textContent = m.finish_reason === "cancelled" ? "Reply stopped." : "Reply finished.";
  refreshListSoon();
}

/** A dropped socket ends every open stream: no reply_end will come for them on this connection. */
function interruptStreams() {
  for (const id of streaming) transcript.interrupt(tree.get(id));
  streaming.clear();
  updateBusy();
}

const busy = () => streaming.size > 0 || !!(transcript.pending && !transcript.pending.failed);
function updateBusy() {
  ui.stop.hidden = streaming.size === 0;
  ui.send.hidden = streaming.size > 0;
  ui.send.disabled = busy();
}

// ---------- sending ----------
function lastReply() {
  const b = transcript.branch;
  return b.length ? b[b.length - 1] : "";
}

async function sendMessage(text, { parentId, editOf } = {}) {
  await restoring;
  if (busy()) { say("Wait for the reply to finish (or press Esc to stop it).", "info"); return false; }
  dwell.flush();   // what was read before this message counts toward the previous replies
  const parent = parentId ?? lastReply();
  const frame = { type: "user_message", text, client_msg_id: uuid(), parent_id: parent };
  if (editOf) frame.edit_of = editOf;
  if (ui.compare.checked) frame.candidates = 2;
  transcript.branch = parent ? tree.branchTo(parent) : [];
  transcript.addPending({ msgId: frame.client_msg_id, parentId: parent, text, frame, sent: false, failed: false });
  transcript.toBottom();
  updateBusy();
  flushPending();
  return true;
}

function flushPending() {
  const p = transcript.pending;
  if (!p || p.sent || p.failed) return;
  if (identity.sessionId) p.frame.session_id = identity.sessionId;
  if (conn.send(p.frame)) { p.sent = true; p.el.classList.remove("queued"); }
}

async function submit() {
  const text = ui.input.value.trim();
  if (!text) return;
  if (await sendMessage(text)) { ui.input.value = ""; autosize(); }
}

function stopAll() {
  for (const id of streaming) if (tree.get(id).state === "streaming") conn.send({ type: "stop", reply_id: id });
}

// ---------- what the feedback bar does ----------
function actions(r) {
  return {
    send: (kind, value, extra) => outbox.send(r.id, kind, value, extra),
    copy: (btn) => { outbox.send(r.id, "copy"); copyText(r, r.renderer.source, btn, "Copied"); },
    regenerate: () => {
      if (busy()) { say("Wait for the reply to finish (or press Esc to stop it).", "info"); return; }
      dwell.flush();
      outbox.send(r.id, "regenerate");
    },
    choose: () => pick(r),
  };
}

async function copyText(r, text, btn) {
  if (btn.classList.contains("copy-code")) outbox.send(r.id, "copy");   // copying part of it is the same signal
  const label = btn.querySelector("span");
  const old = label ? label.textContent : "";
  try { await navigator.clipboard.writeText(text); if (label) label.textContent = "Copied"; }
  catch { if (label) label.textContent = "Copy blocked"; }
  setTimeout(() => { if (label) label.textContent = old; }, 1200);
}

function pick(r) {
  outbox.send(r.id, "choose", r.other.id);
  r.feedback.choose = "chosen"; r.other.feedback.choose = "rejected";
  showChoice(r);
  transcript.render(transcript.branch.map((id) => (id === r.other.id ? r.id : id)));
}

function showChoice(r) {
  r.ui.el.classList.add("chosen"); r.ui.el.classList.remove("dimmed");
  r.other.ui.el.classList.add("dimmed"); r.other.ui.el.classList.remove("chosen");
  if (r.btn && r.btn.choose) setPressed(r.btn.choose, true);
  if (r.other.btn && r.other.btn.choose) setPressed(r.other.btn.choose, false);
}

// Copying by selection is the same signal as the Copy button.
document.addEventListener("copy", () => {
  const sel = getSelection();
  if (!sel || sel.isCollapsed || !sel.anchorNode) return;
  const node = sel.anchorNode.nodeType === 1 ? sel.anchorNode : sel.anchorNode.parentElement;
  const el = node && node.closest("[data-reply-id]");
  const r = el && tree.get(el.dataset.replyId);
  if (r && r.state === "done") outbox.send(r.id, "copy");
});

/** The arrows: show another branch and make it the conversation (the next message follows it). */
function navigate(leaf) {
  if (streaming.size) { say("Wait for the reply to finish before switching answers.", "info"); return; }
  dwell.flush();
  transcript.render(tree.branchTo(leaf));
  if (!conn.send({ type: "select", reply_id: leaf })) wantSelect = leaf;
}

// ---------- conversations ----------
function resetView() {
  stopAll();
  dwell.clear();
  tree = new Tree();
  transcript.tree = tree;
  transcript.reset();
  streaming.clear();
  updateBusy();
}

function restore(data) {
  for (const x of data.replies) {
    newReply(x.reply_id, { parentId: x.parent_id ?? "", msgId: x.client_msg_id || `turn:${x.parent_id}:${x.turn}`, userText: x.user_text })
      .candidates = x.candidates && x.candidates.length === 2 ? x.candidates : null;
    Object.assign(tree.get(x.reply_id), { text: x.text, feedback: x.feedback || {} });
  }
  for (const x of data.replies) {
    const r = tree.get(x.reply_id);
    if (r.candidates) { const [a, b] = r.candidates.map((id) => tree.get(id)); if (a && b) { a.other = b; b.other = a; } }
  }
  for (const x of data.replies) {
    const r = tree.get(x.reply_id);
    transcript.start(r, { adapter_version: x.adapter_version });
    r.renderer.set(x.text || "");
    transcript.end(r, x.finish_reason, x.n_tokens);
    applyState(r, r.feedback);
    if (r.feedback.choose === "chosen" && r.other) showChoice(r);
    dwell.watch(r.id, r.ui.el);
  }
  const known = (data.branch || []).filter((id) => tree.get(id));
  transcript.render(known.length ? tree.branchTo(known[known.length - 1]) : tree.branchTo(tree.descend("")));
  transcript.toBottom();
}

async function load(id) {
  const mine = tree;
  try {
    const data = await api("GET", `/api/sessions/${encodeURIComponent(id)}`);
    if (tree === mine) restore(data);   // not if the user moved on meanwhile
  } catch (e) {
    if (e.status === 404 || e.status === 401) { identity.setSession(null); return; }
    say(`Could not load the conversation: ${e.message}`);
  }
}

function openConversation(id) {
  closeDrawer();
  if (id === identity.sessionId && transcript.branch.length) return;
  resetView();
  identity.setSession(id);
  restoring = load(id);
  conn.reconnectNow();   // the hello names it: the server continues this conversation
  sessions.render($("#search").value.trim());
}

function newChat() {
  dwell.flush();
  resetView();
  identity.setSession(null);
  conn.reconnectNow();   // a hello without session_id makes the server open a new session
  sessions.render("");
  closeDrawer();
  ui.input.focus();
}

let listTimer = null;
const refreshListSoon = () => { clearTimeout(listTimer); listTimer = setTimeout(() => sessions.refresh(), 400); };

// ---------- page wiring ----------
function autosize() { ui.input.style.height = "auto"; ui.input.style.height = `${ui.input.scrollHeight}px`; }
const openDrawer = () => { document.body.classList.add("drawer-open"); $("#search").focus(); };
function closeDrawer() { document.body.classList.remove("drawer-open"); }

ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); submit(); }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && streaming.size) { e.preventDefault(); stopAll(); }
  else if (e.key === "Escape" && document.body.classList.contains("drawer-open")) closeDrawer();
  else if ((e.ctrlKey || e.metaKey) && e.shiftKey && e.key.toLowerCase() === "o") { e.preventDefault(); newChat(); }
});
ui.input.addEventListener("input", autosize);
ui.composer.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
ui.stop.addEventListener("click", stopAll);
for (const b of document.querySelectorAll("[data-action=new-chat]")) b.addEventListener("click", newChat);
$("#menu").addEventListener("click", openDrawer);
$("#close-drawer").addEventListener("click", closeDrawer);
$("#scrim").addEventListener("click", closeDrawer);

// Test and debugging hooks (browser tests rely on these names).
window.rl = {
  get socket() { return conn.socket; },
  outbox: () => outboxRead(),
  sessionId: () => identity.sessionId,
  source: (id) => { const r = tree.get(String(id)); return r ? r.renderer.source : null; },
  branch: () => [...transcript.branch],
  restored: () => restoring,
};
window.rlDwell = (replyId) => dwell.visibleMs(replyId);
window.rlFlushDwell = () => dwell.flush();

if (identity.sessionId) restoring = load(identity.sessionId);
conn.connect();
sessions.refresh();
