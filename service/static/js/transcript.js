// The transcript: the branch on screen, turn by turn (the user's message, then the reply or the
// two candidates), with arrows between sibling answers (‹ 2/3 ›) and between edited versions of
// a message. Reply elements are built once and kept, so a reply keeps streaming, its dwell
// clock and its pressed buttons while the user looks at other branches.
import { fill, h, icon } from "./dom.js";
import { StreamRenderer } from "./markdown.js";

const FINISH_NOTES = { length: "cut off at the length limit", cancelled: "stopped", error: "generation failed" };

export class Transcript {
  /** hooks: navigate(leafId), edit(reply, text), copyCode(reply, text, btn), bar(reply) */
  constructor(root, empty, tree, hooks) {
    Object.assign(this, { root, empty, tree, hooks });
    this.userRows = new Map();   // `${parentId}|${msgId}` -> row
    this.groupRows = new Map();  // first id of a group -> row
    this.branch = [];
    this.pending = null;         // {msgId, parentId, text, row}: sent, no reply yet
  }

  reset() {
    this.userRows.clear(); this.groupRows.clear(); this.branch = []; this.pending = null;
    this.root.replaceChildren(this.empty);
    this.empty.hidden = false;
  }

  // ---------- replies ----------
  /** The reply's element (built on first use): meta line, rendered text, end note, feedback. */
  ui(r) {
    if (r.ui) return r.ui;
    const version = h("span", { class: "tag", "data-testid": "version", title: "adapter version that wrote this reply" });
    const meta = h("div", { class: "meta" }, version);
    const text = h("div", { class: "reply-text md", "data-testid": "reply-text" });
    const endNote = h("div", { class: "end-note" });
    const el = h("article", { class: "msg assistant waiting", "data-reply-id": r.id, "aria-label": "Reply" },
      meta, h("div", { class: "bubble" }, text), endNote);
    r.ui = { el, meta, version, text, endNote, nav: h("span", { class: "nav-slot" }) };
    meta.append(r.ui.nav);
    r.renderer = new StreamRenderer(text, (code, btn) => this.hooks.copyCode(r, code, btn));
    r.renderer.around = (draw) => this.keepScroll(draw);
    return r.ui;
  }

  start(r, m) {
    const u = this.ui(r);
    r.state = "streaming";
    u.el.classList.remove("waiting", "interrupted", "done");
    u.el.classList.add("streaming");
    u.el.setAttribute("aria-busy", "true");
    u.version.textContent = m.adapter_version != null ? String(m.adapter_version) : "?";
    if (m.history_truncated && !u.meta.querySelector(".truncated")) {
      u.meta.append(h("span", { class: "note truncated", "data-testid": "truncated" }, "older turns were dropped to fit the context"));
    }
  }

  end(r, finish, nTokens) {
    const u = this.ui(r);
    r.state = "done";
    r.renderer.finish();
    u.el.classList.remove("streaming", "waiting", "interrupted");
    u.el.classList.add("done");
    u.el.removeAttribute("aria-busy");
    u.el.dataset.finishReason = finish || "stop";
    u.endNote.textContent = FINISH_NOTES[finish] || "";
    if (nTokens != null) u.meta.title = `${nTokens} tokens`;
    if (!r.bar) { r.bar = this.hooks.bar(r); u.el.append(r.bar); }
  }

  interrupt(r) {
    const u = this.ui(r);
    r.state = "interrupted";
    r.renderer.finish();
    u.el.classList.remove("streaming", "waiting");
    u.el.classList.add("interrupted");
    u.el.removeAttribute("aria-busy");
    u.endNote.textContent = "connection lost before the reply finished";
  }

  // ---------- rows ----------
  userRow(r) {
    const key = `${r.parentId}|${r.msgId}`;
    let row = this.userRows.get(key);
    if (!row) {
      const bubble = h("div", { class: "bubble" }, r.userText);
      const edit = h("button", { type: "button", class: "icon-btn edit", "data-testid": "edit", "aria-label": "Edit message",
        title: "Edit and send again (a new branch)" }, icon("edit"));
      const msg = h("div", { class: "msg user", "data-msg-id": r.msgId }, bubble,
        h("div", { class: "user-tools" }, h("span", { class: "nav-slot" }), edit));
      row = h("div", { class: "row user-row" }, msg);
      edit.onclick = () => this.editor(row, msg, r);
      this.userRows.set(key, row);
    }
    return row;
  }

  /** Edit in place: a textarea with Send / Cancel; Send makes a new branch from here. */
  editor(row, msg, r) {
    const area = h("textarea", { class: "edit-area", rows: "3", "aria-label": "Edit your message", "data-testid": "edit-input" });
    area.value = r.userText;
    const close = () => { form.replaceWith(msg); };
    const form = h("form", { class: "msg user editing" }, area, h("div", { class: "edit-actions" },
      h("button", { type: "button", class: "btn small", onclick: close }, "Cancel"),
      h("button", { type: "submit", class: "btn primary small", "data-testid": "edit-send" }, "Send")));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = area.value.trim();
      if (!text || text === r.userText.trim()) { close(); return; }
      close();
      this.hooks.edit(r, text);
    });
    area.addEventListener("keydown", (e) => {
      if (e.key === "Escape") { e.stopPropagation(); close(); }
      else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
    });
    msg.replaceWith(form);
    area.focus();
  }

  groupRow(group) {
    let row = this.groupRows.get(group[0]);
    if (row) return row;
    const rs = group.map((id) => this.tree.get(id));
    if (rs.length === 2) {   // two candidates side by side
      const [a, b] = rs;
      a.other = b; b.other = a;
      row = h("div", { class: "row pair" },
        h("div", { class: "pair-label" }, "Two candidate replies — which one is better?", h("span", { class: "nav-slot" })),
        h("div", { class: "pair-cols" }, this.ui(a).el, this.ui(b).el));
    } else {
      row = h("div", { class: "row assistant-row" }, this.ui(rs[0]).el);
    }
    for (const id of group) this.groupRows.set(id, row);
    return row;
  }

  /** Arrows between siblings: ‹ k / n ›; `go(i)` switches to the i-th. */
  arrows(slot, what, index, count, go) {
    if (count < 2) { slot.replaceChildren(); return; }
    const prev = h("button", { type: "button", class: "icon-btn", "aria-label": `Previous ${what}`, "data-testid": "prev",
      disabled: index === 0, onclick: () => go(index - 1) }, icon("left"));
    const next = h("button", { type: "button", class: "icon-btn", "aria-label": `Next ${what}`, "data-testid": "next",
      disabled: index === count - 1, onclick: () => go(index + 1) }, icon("right"));
    fill(slot, h("span", { class: "siblings", role: "group", "aria-label": `${what} ${index + 1} of ${count}` },
      prev, h("span", { class: "count", "data-testid": "sibling-count" }, `${index + 1} / ${count}`), next));
  }

  /** Show a branch (reply ids, first turn first) and the pending message, if any. */
  render(branch) {
    this.branch = branch;
    this.tree.remember(branch);
    const rows = [];
    for (const id of branch) {
      const r = this.tree.get(id);
      const urow = this.userRow(r);
      const msgs = this.tree.messages(r.parentId);
      this.arrows(urow.querySelector(".nav-slot"), "version of this message", msgs.indexOf(r.msgId), msgs.length,
        (i) => this.hooks.navigate(this.tree.leafAfterSwitch(r.parentId, msgs[i])));
      const groups = this.tree.groups(r.parentId, r.msgId);
      const group = this.tree.groupOf(id);
      const grow = this.groupRow(group);
      const slot = group.length === 2 ? grow.querySelector(".pair-label .nav-slot") : this.ui(r).nav;
      this.arrows(slot, "answer", groups.findIndex((g) => g.includes(id)), groups.length,
        (i) => this.hooks.navigate(this.tree.leafAfterSwitch(r.parentId, r.msgId, groups[i])));
      rows.push(urow, grow);
    }
    if (this.pending) rows.push(this.pending.row);
    this.empty.hidden = rows.length > 0;
    this.root.replaceChildren(this.empty, ...rows);
  }

  /** A message sent (or queued) that has no reply yet. */
  addPending(p) {
    const msg = h("div", { class: "msg user queued", "data-client-msg-id": p.msgId }, h("div", { class: "bubble" }, p.text));
    p.el = msg;
    p.row = h("div", { class: "row user-row" }, msg);
    this.pending = p;
    this.render(this.branch);
  }

  /** Keep following the stream only if the reader is already at the bottom. */
  keepScroll(fn) {
    const t = this.root;
    const pinned = t.scrollHeight - t.scrollTop - t.clientHeight < 80;
    fn();
    if (pinned) t.scrollTop = t.scrollHeight;
  }

  toBottom() { this.root.scrollTop = this.root.scrollHeight; }
}
