// The conversation as a tree, as the server keeps it (service/serving/branches.py): each reply
// knows the reply its message followed (parentId, "" for the first turn) and the message it
// answers (msgId). Answers to one message are siblings (regenerations; a compare pair counts as
// one); messages after one reply are siblings too (edits). The branch on screen is a path from
// the first turn down: the history the next message is sent with. Pure: no DOM.

export class Tree {
  constructor() {
    this.replies = new Map();   // id -> {id, parentId, msgId, userText, text, candidates, feedback, order, ...}
    this.next = 0;
    this.prefMsg = new Map();   // parentId -> msgId last shown after it
    this.prefReply = new Map(); // `${parentId}|${msgId}` -> reply id last shown for that message
  }

  add(r) {
    if (r.order == null) r.order = this.next++;
    this.replies.set(r.id, r);
    return r;
  }

  get(id) { return this.replies.get(id); }

  /** Reply ids from the first turn down to `id`. */
  branchTo(id) {
    const out = [], seen = new Set();
    for (let r = this.get(id); r && !seen.has(r.id); r = this.get(r.parentId)) { seen.add(r.id); out.push(r.id); }
    return out.reverse();
  }

  children(parentId) { return [...this.replies.values()].filter((r) => r.parentId === parentId).sort((a, b) => a.order - b.order); }

  /** The messages sent after a reply ("" = first turn), in the order they were first answered. */
  messages(parentId) { return [...new Set(this.children(parentId).map((r) => r.msgId))]; }

  /** The answers to one message: each a group (a compare pair, or one reply), oldest first. */
  groups(parentId, msgId) {
    const out = [], seen = new Set();
    for (const r of this.children(parentId)) {
      if (r.msgId !== msgId || seen.has(r.id)) continue;
      const ids = (r.candidates && r.candidates.length > 1 ? r.candidates : [r.id]).filter((x) => this.get(x));
      if (!ids.includes(r.id)) ids.push(r.id);
      ids.forEach((x) => seen.add(x));
      out.push(ids);
    }
    return out;
  }

  groupOf(id) {
    const r = this.get(id);
    return r ? this.groups(r.parentId, r.msgId).find((g) => g.includes(id)) || [id] : [];
  }

  /** The reply of a group the conversation goes on from: the chosen candidate, else the first. */
  representative(group) {
    return group.find((x) => (this.get(x).feedback || {}).choose === "chosen") || group[0];
  }

  /** Go down from a reply to a leaf: at each step the message and answer last shown, else the newest. */
  descend(id) {
    let cur = id;
    for (let guard = 0; guard < 10000; guard++) {
      const msgs = this.messages(cur);
      if (!msgs.length) return cur;
      const msg = msgs.includes(this.prefMsg.get(cur)) ? this.prefMsg.get(cur) : msgs[msgs.length - 1];
      const groups = this.groups(cur, msg);
      const pref = this.prefReply.get(`${cur}|${msg}`);
      const group = groups.find((g) => g.includes(pref)) || groups[groups.length - 1];
      cur = group.includes(pref) ? pref : this.representative(group);
    }
    return cur;
  }

  /** Remember the choices along a branch, so that coming back to a fork shows the same path. */
  remember(branch) {
    for (const id of branch) {
      const r = this.get(id);
      if (!r) continue;
      this.prefMsg.set(r.parentId, r.msgId);
      this.prefReply.set(`${r.parentId}|${r.msgId}`, id);
    }
  }

  /** The leaf a sibling switch leads to: `to` is a message id (an edit sibling) or a reply id. */
  leafAfterSwitch(parentId, msgId, group) {
    const g = group || (() => {
      const groups = this.groups(parentId, msgId);
      const pref = this.prefReply.get(`${parentId}|${msgId}`);
      return groups.find((x) => x.includes(pref)) || groups[groups.length - 1];
    })();
    const pref = this.prefReply.get(`${parentId}|${msgId}`);
    return this.descend(g.includes(pref) ? pref : this.representative(g));
  }
}
