"""Does a long reply with code blocks stream without blocking the chat page? In headless
Chromium, the page's own renderer (service/static/js/markdown.js, the StreamRenderer every reply
uses) is fed a synthetic 2,000-token Markdown reply (prose, lists, a table, code in three
languages), token by token as the real tokenizer splits it, one token every --interval-ms. A
PerformanceObserver records every main-thread long task (> 50 ms of wall time); a Chromium trace
gives every task's thread CPU time (on a shared machine the wall time of a task also counts the
time the OS ran other processes); each render is timed; a 20 ms timer measures how late it fires
(what typing would feel). Aim: no main-thread task over 50 ms.

The tiny test model cannot write such text and SmolLM2 on 2 CPU cores writes ~12 tokens/s, so the
stream is synthetic: the same renderer, faster than any CPU model streams.

    python bench/chat_render.py [--tokens 2000] [--interval-ms 5]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import live_server, pct, table, write_json

from tests.support.processes import MODELS as MODELS_DIR

SECTION = """## Step {i}: {topic}

Here is how to {topic} in practice. The **key idea** is to keep each part small, and to *measure*
before changing anything. A few things to check:

1. the input is what you think it is;
2. the output is checked by a test;
3. the slow part is measured, not guessed.

| option | cost | when |
|---|---|---|
| cache | memory | repeated reads |
| batch | latency | many small writes |

```python
def step_{i}(items: list[int]) -> int:
    total = 0
    for x in items:
        if x % 2 == 0:
            total += x * x
    return total
```

```js
export function step{i}(items) {{
  return items.filter((x) => x % 2 === 0).reduce((a, x) => a + x * x, 0);
}}
```

```bash
for f in data/*.csv; do wc -l "$f"; done | sort -n | tail -3
```

> Keep the change small, and say what it measured.

"""
TOPICS = ["read a file", "parse the data", "cache results", "batch writes", "test the parser", "profile it",
          "ship it", "watch the metrics", "roll back", "document it"]

DRIVE = """async ([pieces, intervalMs]) => {
  const { StreamRenderer } = await import('/static/js/markdown.js');
  const longTasks = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) longTasks.push(e.duration); })
    .observe({ type: 'longtask', buffered: false });
  const text = document.createElement('div');
  text.className = 'reply-text md';
  const article = document.createElement('article');
  article.className = 'msg assistant streaming';
  const bubble = document.createElement('div');
  bubble.className = 'bubble';
  bubble.append(text); article.append(bubble);
  const row = document.createElement('div'); row.className = 'row assistant-row'; row.append(article);
  document.querySelector('#transcript').append(row);
  document.querySelector('#empty').hidden = true;
  const r = new StreamRenderer(text);
  const renders = [];
  const draw = r.draw.bind(r);
  r.draw = (c) => { const t = performance.now(); draw(c); renders.push(performance.now() - t); };
  const lags = []; let expected = performance.now() + 20; let probing = true;
  const probe = () => { const now = performance.now(); lags.push(now - expected); expected = now + 20;
                        if (probing) setTimeout(probe, 20); };
  setTimeout(probe, 20);
  const started = performance.now();
  for (const p of pieces) { r.append(p); await new Promise((res) => setTimeout(res, intervalMs)); }
  r.finish();
  await new Promise((res) => setTimeout(res, 300));
  probing = false;
  const streamMs = performance.now() - started;
  const t = performance.now(); const again = document.createElement('div'); new StreamRenderer(again).set(r.source);
  const reopenMs = performance.now() - t;
  return { longTasks, renders, lags, streamMs, reopenMs, chars: r.source.length,
           blocks: text.querySelectorAll('.md-block').length, code: text.querySelectorAll('pre code.hljs').length };
}"""


def pieces(n_tokens: int) -> list[str]:
    """The reply as the tokenizer streams it: n_tokens decoded pieces (the real SmolLM2 tokenizer)."""
    from transformers import AutoTokenizer

    from core.modeling import ensure_tiny
    tok = AutoTokenizer.from_pretrained(ensure_tiny(MODELS_DIR))   # SmolLM2's tokenizer
    text, i = "", 0
    while len(tok(text, add_special_tokens=False)["input_ids"]) < n_tokens:
        text += SECTION.format(i=i, topic=TOPICS[i % len(TOPICS)])
        i += 1
    ids = tok(text, add_special_tokens=False)["input_ids"][:n_tokens]
    out, prev = [], ""
    for k in range(1, len(ids) + 1):   # incremental decoding, as the server streams text
        now = tok.decode(ids[:k])
        out.append(now[len(prev):])
        prev = now
    return out


def main_thread_tasks(trace: bytes) -> tuple[list[float], list[float]]:
    """(wall ms, thread CPU ms) of every task the page's main thread ran, from a Chromium trace.
    Thread time leaves out the time the OS gave the core to other processes: on a shared machine
    it is what the page itself costs, where wall time also counts the waiting."""
    events = json.loads(trace)["traceEvents"]
    main = {(e["pid"], e["tid"]) for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"}
    tasks = [e for e in events if e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask") and e.get("ph") == "X"
             and (e["pid"], e["tid"]) in main]
    return [e.get("dur", 0) / 1000 for e in tasks], [e.get("tdur", e.get("dur", 0)) / 1000 for e in tasks]


def run(browser, page, stream: list[str], interval_ms: float) -> dict:
    browser.start_tracing(page=page, categories=["devtools.timeline", "toplevel"])
    got = page.evaluate(DRIVE, [stream, interval_ms])
    wall, cpu = main_thread_tasks(browser.stop_tracing())
    r = got["renders"]
    return {"interval_ms": interval_ms, "tokens": len(stream), "chars": got["chars"], "renders": len(r),
            "task_wall_max_ms": max(wall), "task_cpu_max_ms": max(cpu), "tasks_cpu_over_50ms": sum(c > 50 for c in cpu),
            "render_max_ms": max(r), "render_p95_ms": pct(r, 0.95), "long_tasks": len(got["longTasks"]),
            "long_task_max_ms": max(got["longTasks"], default=0.0), "timer_lag_max_ms": max(got["lags"]),
            "timer_lag_p95_ms": pct(got["lags"], 0.95), "stream_s": got["streamMs"] / 1000,
            "reopen_ms": got["reopenMs"], "code_blocks": got["code"], "kept_blocks": got["blocks"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--interval-ms", type=float, nargs="+", default=[5.0, 0.0])
    args = ap.parse_args()
    stream = pieces(args.tokens)
    from playwright.sync_api import sync_playwright
    rows = []
    with live_server("tiny-random") as (srv, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(srv.url + "/")
        page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=60_000)
        for interval in args.interval_ms:
            rows.append(run(browser, page, stream, interval))
            page.reload()
            page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=60_000)
        browser.close()
    print(table(rows, ["interval_ms", "tokens", "renders", "render_max_ms", "render_p95_ms", "long_tasks",
                       "long_task_max_ms", "task_cpu_max_ms", "tasks_cpu_over_50ms", "timer_lag_max_ms", "reopen_ms"]))
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    path = write_json("chat_render", {"rows": rows, "load_average": os.getloadavg()[0],
                                      "how": "synthetic Markdown stream fed to the page's StreamRenderer in headless "
                                      "Chromium; PerformanceObserver('longtask') for wall time, a Chromium trace "
                                      "(RunTask tdur on CrRendererMain) for each task's thread CPU time"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
