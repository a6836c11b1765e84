"""Plain server-rendered HTML for a logged session and for a replay. Pure: dicts in, a page
out. Every piece of user or model text goes through html.escape: the model can say anything."""
from __future__ import annotations

import json
import time
from html import escape

STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:70em}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}
.user{background:#f3f6ff}.model{white-space:pre-wrap}.dim{color:#666}
.diff{background:#fff3f0}.same{background:#f0fff3}.tags{background:#fff4d6;padding:0 .3em;border-radius:3px}"""


def _t(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) if ts else "-"


def _num(x, fmt="{:+.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def _events(evs: list[dict]) -> str:
    if not evs:
        return "<span class='dim'>no feedback</span>"
    items = []
    for e in evs:
        value = "" if e.get("value") is None else " " + escape(json.dumps(e["value"]))
        role = " (as the rejected one)" if e.get("role") == "rejected" else ""
        why = ""
        if e.get("tags"):
            why += " <span class='tags'>" + escape(", ".join(map(str, e["tags"]))) + "</span>"
        if e.get("comment"):
            why += " <q>" + escape(str(e["comment"])) + "</q>"
        items.append(f"<li>{_t(e.get('server_time'))} <b>{escape(str(e.get('kind')))}</b>{value}{escape(role)}{why}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _reward(rw: dict | None) -> str:
    if not rw:
        return "<span class='dim'>no ledger entry yet</span>"
    comps = "".join(f"<li>{escape(k)} {_num(v)}</li>" for k, v in (rw.get("components") or {}).items())
    return (f"{escape(str(rw.get('state', '?')))} <b>{_num(rw.get('reward'))}</b>"
            f"<ul>{comps}</ul><span class='dim'>config {escape(str(rw.get('config_hash', '-')))}</span>")


def session_page(s: dict) -> str:
    head = (f"<h1>Session {escape(s['session_id'])}</h1><p>user {escape(s['user_id'])} · created {_t(s['created'])}"
            f" · last active {_t(s['last_active'])} · {s['turns']} turns, {len(s['replies'])} replies · adapters "
            f"{escape(', '.join(s['adapters']) or '-')} · mean reward {_num(s['mean_reward'])}"
            + (f" · <b>{escape(s['excluded'])}</b>" if s.get("excluded") else "") + "</p>")
    rows = ["<tr><th>turn</th><th>user</th><th>reply</th><th>version</th><th>feedback</th><th>reward</th></tr>"]
    for r in s["replies"]:
        kept = "" if r.get("in_history") else "<br><span class='dim'>(not kept)</span>"
        rows.append(
            f"<tr><td>{escape(str(r.get('turn', '')))}{kept}</td><td class='user'>{escape(r.get('user_text', ''))}</td>"
            f"<td class='model'>{escape(r.get('text', ''))}<br><span class='dim'>{escape(r['reply_id'])} · "
            f"{escape(str(r.get('finish_reason', '')))} · {_t(r.get('ended_at'))}</span></td>"
            f"<td>{escape(str(r.get('adapter_version', '')))}<br><span class='dim'>seed "
            f"{escape(str((r.get('params') or {}).get('seed', '-')))}</span></td>"
            f"<td>{_events(r.get('events', []))}</td><td>{_reward(r.get('reward'))}</td></tr>")
    return _page(f"session {s['session_id']}", head + "<table>" + "".join(rows) + "</table>")


def replay_page(session: dict, version: str, rows: list[dict]) -> str:
    head = (f"<h1>Replay of {escape(session['session_id'])} on {escape(version)}</h1>"
            f"<p>user {escape(session['user_id'])} · {len(rows)} replies · "
            f"{sum(r['identical'] for r in rows)} identical to what was served</p>")
    out = ["<tr><th>turn</th><th>user</th><th>served</th><th>replay</th><th>log-probs</th></tr>"]
    for r in rows:
        cls = "same" if r["identical"] else "diff"
        out.append(
            f"<tr class='{cls}'><td>{escape(str(r.get('turn', '')))}</td><td class='user'>{escape(r['user_text'])}</td>"
            f"<td class='model'>{escape(r['served']['text'])}<br><span class='dim'>v "
            f"{escape(str(r['served']['adapter_version']))} seed {r['served']['params']['seed']}</span></td>"
            f"<td class='model'>{escape(r['replay']['text'])}<br><span class='dim'>v {escape(version)} seed "
            f"{r['replay']['params']['seed']}</span></td>"
            f"<td>served under {escape(version)}: {_num(r['served_logp_under_replay'], '{:.3f}')}<br>behavior: "
            f"{_num(r['served']['behavior_logp'], '{:.3f}')}<br>log weight: {_num(r['log_weight'])}</td></tr>")
    return _page(f"replay {session['session_id']}", head + "<table>" + "".join(out) + "</table>")
