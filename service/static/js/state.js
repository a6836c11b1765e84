// What the page remembers: the user's token and the open conversation (localStorage, so a
// reload restores them), ids, and the fetches of the sessions API.

export const LS = { token: "rl_token", session: "rl_session", outbox: "rl_outbox" };

// localStorage can throw (privacy modes, quota): fall back to memory so the page still works.
const mem = {};
export const lsGet = (k) => { try { return localStorage.getItem(k); } catch { return k in mem ? mem[k] : null; } };
export const lsSet = (k, v) => { try { localStorage.setItem(k, v); } catch { mem[k] = v; } };
export const lsDel = (k) => { try { localStorage.removeItem(k); } catch { delete mem[k]; } };

// crypto.randomUUID only exists in secure contexts; plain http on a LAN address must work too.
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const x = Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

export const identity = {
  sessionId: lsGet(LS.session),

  /** A session belongs to one user: a different token means the stored session is not ours. */
  setToken(t) {
    if (lsGet(LS.token) === t) return;
    lsSet(LS.token, t);
    this.setSession(null);
  },

  setSession(id) {
    this.sessionId = id ? String(id) : null;
    if (this.sessionId) lsSet(LS.session, this.sessionId); else lsDel(LS.session);
  },

  dropToken() { lsDel(LS.token); },

  /** The user's token; a new anonymous one the first time (one request, however many callers wait). */
  token() {
    const have = lsGet(LS.token);
    if (have) return Promise.resolve(have);
    if (!this.minting) {
      this.minting = (async () => {
        const r = await fetch("/api/session", { method: "POST" });
        if (!r.ok) throw new Error(`POST /api/session answered ${r.status}`);
        const j = await r.json();
        if (!j || !j.token) throw new Error("POST /api/session returned no token");
        this.setToken(j.token);
        return j.token;
      })().finally(() => { this.minting = null; });
    }
    return this.minting;
  },
  minting: null,
};

{ // ?token= wins over storage; strip it from the address bar so it is not bookmarked or shared.
  const url = new URL(location.href);
  const t = url.searchParams.get("token");
  if (t) {
    identity.setToken(t);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url);
  }
}

/** The sessions API with the user's token: JSON, or an Error with the server's message. */
export async function api(method, path, body) {
  const token = await identity.token();
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, init);
  const j = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error((j.error && j.error.message) || `${method} ${path} answered ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return j;
}
