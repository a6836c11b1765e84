"""Screenshots of the chat page for the docs: 1280 and 375 px wide, light and dark, written to
docs/img/chat-{width}-{scheme}.png. The conversation is seeded into Redis as the server logs one
(the tiny test model writes random tokens; SmolLM2 would take minutes on a CPU), then the page
reopens it exactly as after a reload: rendered Markdown, highlighted code, pressed feedback, the
list of conversations.

    python bench/screenshots.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, live_server

from core.keys import Keys
from core.records import ReplyRecord
from service.serving.auth import create_token
from tests.support.processes import SECRET

OUT = REPO / "docs" / "img"
USER = "u_docs"
ANSWER = """Use the `csv` module from the standard library, or **pandas** for bigger files:

```python
import csv

with open("sales.csv", newline="") as f:
    total = sum(float(row["amount"]) for row in csv.DictReader(f))
print(f"total: {total:.2f}")
```

| way | good for |
|---|---|
| `csv` | small files, no dependencies |
| `pandas` | large files, grouping |

1. open the file with `newline=""`;
2. read rows as dicts;
3. sum the column."""
FOLLOW = "Yes: `pandas.read_csv(\"sales.csv\")[\"amount\"].sum()` does the same in one line."


def seed(r, keys: Keys) -> str:
    now = time.time()
    for i, title in enumerate(["Plan a 3-day trip to Lisbon", "Explain KV caches simply", "Regex for dates"]):
        sid = f"s_docs_old{i}"
        r.hset(keys.session_meta(sid), mapping={"user_id": USER, "created": repr(now - 86400 * (i + 1)),
                                                 "last_active": repr(now - 86400 * (i + 1)), "title": title})
        r.rpush(keys.session_replies(sid), f"rep_docs_old{i}")
        r.zadd(keys.user_sessions(USER), {sid: now - 86400 * (i + 1)})
    sid, turns = "s_docs_csv", [("How do I sum a column of a CSV file in Python?", ANSWER),
                                ("Is there a shorter way with pandas?", FOLLOW)]
    parent = ""
    for i, (question, answer) in enumerate(turns):
        rid = f"rep_docs_{i}"
        rec = ReplyRecord(reply_id=rid, user_id=USER, session_id=sid, turn=i, api="ws", client_msg_id=f"m{i}",
                          user_text=question, text=answer, adapter_version="3", finish_reason="stop", n_tokens=120,
                          queued_at=now - 60 + i, ended_at=now - 50 + i, extra={"parent_id": parent})
        r.hset(keys.reply(rid), mapping=rec.to_redis())
        r.rpush(keys.session_replies(sid), rid)
        r.rpush(keys.session(sid), rid)
        parent = rid
    r.hset(keys.session_meta(sid), mapping={"user_id": USER, "created": repr(now - 60), "last_active": repr(now),
                                            "title": "Sum a CSV column in Python"})
    r.zadd(keys.user_sessions(USER), {sid: now - 60})
    # what the user pressed, as the server keeps it for the page (fb:{reply}:{kind} in the meta hash)
    r.hset(keys.session_meta(sid), mapping={"fb:rep_docs_0:thumbs": "1", "fb:rep_docs_0:rating": "5",
                                            "fb:rep_docs_0:reasons": json.dumps({"tags": ["clear", "helpful"],
                                                                                 "comment": ""})})
    return sid


def main() -> None:
    from playwright.sync_api import sync_playwright

    from core.redis_conn import connect
    OUT.mkdir(parents=True, exist_ok=True)
    with live_server("tiny-random") as (srv, redis), sync_playwright() as pw:
        sid = seed(connect(redis.url), Keys(srv.prefix))
        token = create_token(SECRET, USER, 3600)
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        for width, height in ((1280, 800), (375, 760)):
            for scheme in ("light", "dark"):
                ctx = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
                ctx.add_init_script(f"localStorage.setItem('rl_token', {token!r}); localStorage.setItem('rl_session', {sid!r});")
                page = ctx.new_page()
                page.goto(srv.url + "/")
                page.wait_for_selector("article[data-reply-id='rep_docs_1'][data-finish-reason]", timeout=60_000)
                page.wait_for_selector("[data-testid=conv-open]", state="attached")
                page.evaluate("document.querySelector('#transcript').scrollTop = 0")
                path = OUT / f"chat-{width}-{scheme}.png"
                page.screenshot(path=str(path))
                print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
                ctx.close()
        browser.close()


if __name__ == "__main__":
    main()
