// Feedback survives drops and reloads: every feedback frame is stored in localStorage before it
// is sent and removed only when the server acknowledges it (same feedback_id: the server
// stores it once however often it arrives).
import { LS, lsGet, lsSet, uuid } from "./state.js";

export function read() {
  try { const o = JSON.parse(lsGet(LS.outbox) || "{}"); return o && typeof o === "object" ? o : {}; }
  catch { return {}; }
}
const write = (o) => lsSet(LS.outbox, JSON.stringify(o));

/** Re-read on every change: another tab may share the same outbox. */
export function remove(id) {
  const o = read();
  if (!(id in o)) return false;
  delete o[id]; write(o);
  return true;
}

export const get = (id) => read()[id];

export class Outbox {
  constructor(connection) { this.connection = connection; }

  /** Store, then send (if connected): {reply_id, kind, value?, tags?, comment?}. */
  send(replyId, kind, value, extra = {}) {
    const f = { type: "feedback", feedback_id: uuid(), reply_id: replyId, kind, client_time: Date.now(), ...extra };
    if (value !== undefined) f.value = value;
    const o = read(); o[f.feedback_id] = f; write(o);
    this.connection.send(f);
    return f;
  }

  /** Everything not acknowledged yet, again (after a reconnect or a reload). */
  resend() { for (const f of Object.values(read())) this.connection.send(f); }

  /** The server could not store it now (unavailable, rate limited): try again shortly. */
  retry(id, ms) {
    const f = get(id);
    if (f) setTimeout(() => this.connection.send(f), ms);
  }
}
