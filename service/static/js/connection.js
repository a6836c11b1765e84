// The websocket to /ws/chat as explicit states: connecting -> ready -> closed -> reconnecting,
// with jittered backoff. A hello names the open conversation so a new connection resumes it.
import { identity } from "./state.js";

const BACKOFF_MIN = 500, BACKOFF_MAX = 5000;
const CLOSE_AUTH_FAILED = 4401;

export class Connection {
  /** handlers: onFrame(frame), onReady(frame, resumed), onStatus(state, detail), onDrop() */
  constructor(handlers) {
    this.on = handlers;
    this.conn = null;          // {sock, ready, helloSession}
    this.gen = 0; this.everReady = false; this.backoff = BACKOFF_MIN; this.retry = null; this.helloFailures = 0;
    window.addEventListener("online", () => { if (!this.conn && this.retry) this.connect(); });
  }

  get socket() { return this.conn ? this.conn.sock : null; }
  get ready() { return !!(this.conn && this.conn.ready && this.conn.sock.readyState === WebSocket.OPEN); }

  send(frame) {
    if (!this.ready) return false;
    this.conn.sock.send(JSON.stringify(frame));
    return true;
  }

  async connect() {
    clearTimeout(this.retry); this.retry = null;
    const gen = ++this.gen;
    this.on.onStatus(this.everReady ? "reconnecting" : "connecting");
    let token;
    try { token = await identity.token(); } catch (e) {
      console.warn("rewardloop:", e);
      if (gen === this.gen) this.later();
      return;
    }
    if (gen !== this.gen) return;   // a newer connect() superseded this one while we waited
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const c = { sock: new WebSocket(`${scheme}//${location.host}/ws/chat`), ready: false, helloSession: null };
    this.conn = c;
    c.sock.onopen = () => {
      const hello = { type: "hello", token };
      if (identity.sessionId) hello.session_id = c.helloSession = identity.sessionId;   // resume
      c.sock.send(JSON.stringify(hello));
    };
    c.sock.onmessage = (ev) => { if (this.conn === c) this.frame(c, ev.data); };
    c.sock.onclose = (ev) => { if (this.conn === c) this.closed(c, ev); };
    c.sock.onerror = () => {};   // a close event always follows; handled there
  }

  frame(c, raw) {
    let m;
    try { m = JSON.parse(raw); } catch { this.on.onFrame({ type: "error", code: "bad_json", message: "The server sent a frame that is not JSON." }); return; }
    if (m.type === "ready") {
      c.ready = true; this.everReady = true; this.backoff = BACKOFF_MIN; this.helloFailures = 0;
      const resumed = !c.helloSession || String(m.session_id) === c.helloSession;
      if (m.session_id) identity.setSession(m.session_id);
      this.on.onStatus("connected");
      this.on.onReady(m, resumed);
      return;
    }
    if (m.type === "error" && !c.ready && (m.code === "unauthorized" || m.code === "not_ready")) {
      this.on.onStatus(this.everReady ? "reconnecting" : "connecting", m.message || m.code);   // the close recovers
      return;
    }
    this.on.onFrame(m);
  }

  closed(c, ev) {
    this.conn = null;
    this.on.onDrop();
    if (ev.code === CLOSE_AUTH_FAILED) {
      identity.dropToken();   // bad token: the next connect() asks /api/session for a fresh one
    } else if (!c.ready && c.helloSession && ++this.helloFailures >= 2) {
      identity.setSession(null); this.helloFailures = 0;   // twice refused while resuming: start anew
    }
    this.later();
  }

  later() {
    this.on.onStatus(this.everReady ? "reconnecting" : "connecting");
    if (this.retry) return;
    const delay = Math.min(BACKOFF_MAX, this.backoff * (0.8 + 0.4 * Math.random()));   // jitter: no herd
    this.backoff = Math.min(BACKOFF_MAX, this.backoff * 2);
    this.retry = setTimeout(() => this.connect(), delay);
  }

  /** Close and connect again now (another conversation, or a new one: the hello says which). */
  reconnectNow() {
    const old = this.conn; this.conn = null;
    if (old) old.sock.close(1000, "client reconnect");
    this.backoff = BACKOFF_MIN;
    this.connect();
  }
}
