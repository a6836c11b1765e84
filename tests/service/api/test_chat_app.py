"""The chat page as an app people would choose, in headless Chromium against a real server and
Redis: conversations that survive a reload (with what the user pressed), the list (search,
rename, delete), edit/branch/regenerate with sibling arrows (the model sees the branch on
screen), stop, keyboard habits, reasons, accessibility (axe-core) and a 375 px layout."""
from __future__ import annotations

import json

import pytest

from core import feedback_tags
from core.keys import Keys
from tests.support.chat_page import FINISHED, ask, open_chat, reply, send, wait_outbox_empty
from tests.support.clients import http
from tests.support.devtools import finalize_rewards
from tests.support.processes import ADMIN, REPO

pytestmark = [pytest.mark.integration, pytest.mark.browser]
AXE = REPO / "tests" / "support" / "axe" / "axe.min.js"


def articles(page) -> list[str]:
    return page.locator("article[data-reply-id]").evaluate_all("els => els.map(e => e.dataset.replyId)")


def conversations(page) -> list[str]:
    return page.locator("[data-testid=conv-open] .conv-title").all_text_contents()


def history_of(rdb, prefix: str, rid: str) -> list[str]:
    msgs = json.loads(rdb.hget(Keys(prefix).reply(rid), "prompt_messages"))
    return [m["content"] for m in msgs if m["role"] == "user"]


def events(rdb, prefix: str, **match) -> list[dict]:
    return [f for _, f in rdb.xrange(Keys(prefix).events) if all(f.get(k) == v for k, v in match.items())]


def serious_violations(page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    return page.evaluate("""() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations
        .filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})))""")


def test_conversations_survive_a_reload_and_the_list_searches_renames_deletes(server, page, rdb):
    open_chat(page, server)
    r1 = ask(page, "first question about apples")
    reply(page, r1).get_by_test_id("thumb-down").click()
    form = reply(page, r1).get_by_test_id("reasons")
    form.get_by_test_id("tag-too_long").check()
    form.get_by_test_id("tag-unsafe").check()
    form.get_by_test_id("reason-comment").fill("rude")
    form.get_by_test_id("reason-send").click()
    assert "Too long, Unsafe or harmful" in reply(page, r1).get_by_test_id("reasons-note").text_content()
    reply(page, r1).get_by_test_id("star-4").click()
    r2 = ask(page, "second one")
    box = page.get_by_test_id("input")                    # Shift+Enter adds a line, it does not send
    box.fill("line one")
    box.press("Shift+Enter")
    box.type("line two")
    assert box.input_value() == "line one\nline two" and articles(page) == [r1, r2]
    box.fill("")
    wait_outbox_empty(page)
    [why] = events(rdb, server.prefix, kind="reasons", reply_id=r1)
    assert json.loads(why["tags"]) == ["too_long", "unsafe"] and why["comment"] == "rude"
    s1 = page.evaluate("rl.sessionId()")

    page.reload()                                         # the same conversation, exactly
    page.wait_for_selector(f"{FINISHED}[data-reply-id='{r2}']", timeout=30_000)
    assert articles(page) == [r1, r2]
    for rid in (r1, r2):
        assert page.evaluate("(id) => rl.source(id)", rid) == rdb.hget(Keys(server.prefix).reply(rid), "text")
    assert reply(page, r1).get_by_test_id("thumb-down").get_attribute("aria-pressed") == "true"
    assert reply(page, r1).get_by_test_id("star-4").get_attribute("aria-pressed") == "true"
    assert reply(page, r1).locator(".star.filled").count() == 4
    assert "Too long, Unsafe or harmful" in reply(page, r1).get_by_test_id("reasons-note").text_content()
    page.wait_for_function("document.querySelectorAll('[data-testid=conv-open]').length === 1")
    assert conversations(page) == ["first question about apples"]
    assert page.locator("[data-testid=conv-open][aria-current=page]").count() == 1

    page.keyboard.press("Control+Shift+O")                # a new chat
    page.wait_for_selector("[data-testid=status][data-state=connected]")
    page.wait_for_function(f"rl.sessionId() && rl.sessionId() !== {s1!r}")
    assert articles(page) == []
    ask(page, "bananas are yellow")
    s2 = page.evaluate("rl.sessionId()")
    page.wait_for_function("document.querySelectorAll('[data-testid=conv-open]').length === 2")
    assert conversations(page) == ["bananas are yellow", "first question about apples"]   # newest first
    page.get_by_test_id("search").fill("APPLES")
    page.wait_for_function("document.querySelectorAll('[data-testid=conv-open]').length === 1")
    assert conversations(page) == ["first question about apples"]
    page.get_by_test_id("search").fill("")
    page.wait_for_function("document.querySelectorAll('[data-testid=conv-open]').length === 2")

    page.locator(f"li[data-session-id='{s1}'] [data-testid=conv-rename]").click()
    page.get_by_test_id("conv-title-input").fill("Fruit talk")
    page.get_by_test_id("conv-title-input").press("Enter")
    page.wait_for_function("[...document.querySelectorAll('.conv-title')].some(e => e.textContent === 'Fruit talk')")
    page.locator(f"li[data-session-id='{s1}'] [data-testid=conv-open]").click()   # reopen the first
    page.wait_for_selector(f"{FINISHED}[data-reply-id='{r2}']", timeout=30_000)
    assert articles(page) == [r1, r2] and page.evaluate("rl.sessionId()") == s1

    page.locator(f"li[data-session-id='{s2}'] [data-testid=conv-delete]").click()
    assert "bananas are yellow" in page.locator("#delete-dialog").text_content()
    page.get_by_test_id("confirm-delete").click()
    page.wait_for_function("document.querySelectorAll('[data-testid=conv-open]').length === 1")
    assert conversations(page) == ["Fruit talk"]
    token = page.evaluate("localStorage.getItem('rl_token')")
    assert http("GET", f"{server.url}/api/sessions/{s2}", token=token)[0] == 404
    assert page.errors == []


def test_edit_and_regenerate_make_branches_and_the_model_sees_the_branch_on_screen(server, page, rdb, redis_url):
    p = server.prefix
    open_chat(page, server)
    a1 = ask(page, "one")
    a2 = ask(page, "two")
    user_row = page.locator(".row.user-row").nth(1)
    user_row.get_by_test_id("edit").click()
    page.get_by_test_id("edit-input").fill("two, edited")
    page.get_by_test_id("edit-input").press("Enter")
    page.wait_for_function(f"document.querySelectorAll({FINISHED!r}).length === 2 && "
                           f"!document.querySelector(\"article[data-reply-id='{a2}']\")", timeout=60_000)
    b2 = articles(page)[1]
    assert b2 != a2 and history_of(rdb, p, b2) == ["one", "two, edited"]
    [edited] = events(rdb, p, kind="edited")
    assert edited["reply_id"] == a2
    user_row = page.locator(".row.user-row").nth(1)
    assert user_row.get_by_test_id("sibling-count").text_content() == "2 / 2"

    user_row.get_by_test_id("prev").click()               # back to the first wording and its answer
    assert articles(page) == [a1, a2]
    a3 = ask(page, "three")
    assert history_of(rdb, p, a3) == ["one", "two", "three"]   # the branch on screen, not the edit

    reply(page, a3).get_by_test_id("regenerate").click()
    page.wait_for_function(f"document.querySelectorAll({FINISHED!r}).length === 3 && "
                           f"!document.querySelector(\"article[data-reply-id='{a3}']\")", timeout=60_000)
    c3 = articles(page)[2]
    assert history_of(rdb, p, c3) == ["one", "two", "three"]
    reply(page, c3).get_by_test_id("prev").click()
    assert articles(page) == [a1, a2, a3]
    a4 = ask(page, "four")                                # went on from a3: preferred over its sibling
    assert history_of(rdb, p, a4) == ["one", "two", "three", "four"]
    assert json.loads(rdb.hget(Keys(p).reply(a4), "prompt_messages"))[-2]["content"] == \
        rdb.hget(Keys(p).reply(a3), "text")
    [went_on] = events(rdb, p, kind="sibling", reply_id=a3)
    assert went_on["value"] == c3 and went_on["how"] == "went on from it"
    wait_outbox_empty(page)
    finalize_rewards(redis_url, p)
    comps = {r: json.loads(rdb.hget(Keys(p).reward(r), "components") or "{}") for r in (a2, a3, c3)}
    assert comps[a2]["edited"] == -0.5 and comps[a3]["sibling"] == 0.5 and comps[c3]["sibling"] == -0.5
    assert page.errors == []


def test_stop_ends_the_stream_and_keeps_the_partial_reply(server_factory, page, rdb):
    srv = server_factory(REWARDLOOP_MAX_NEW_TOKENS=2000)
    open_chat(page, srv)
    send(page, "tell me everything")
    page.wait_for_function("(() => { const a = document.querySelector('article.streaming');"
                           " return a && rl.source(a.dataset.replyId).length > 0; })()", timeout=60_000)
    assert page.get_by_test_id("stop").is_visible() and not page.get_by_test_id("send").is_visible()
    page.keyboard.press("Escape")
    done = page.locator("article[data-finish-reason='cancelled']")
    done.wait_for(timeout=30_000)
    rid = done.get_attribute("data-reply-id")
    rec = rdb.hgetall(Keys(srv.prefix).reply(rid))
    assert rec["finish_reason"] == "cancelled" and 0 < int(rec["n_tokens"]) < 2000
    assert rec["text"] == page.evaluate("(id) => rl.source(id)", rid)
    assert done.locator(".end-note").text_content() == "stopped" and page.get_by_test_id("send").is_visible()
    assert page.errors == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_accessible_in_both_themes_and_at_375_px(server, browser, scheme):
    ctx = browser.new_context(color_scheme=scheme, viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    open_chat(page, server)
    rid = ask(page, "hello")
    reply(page, rid).get_by_test_id("thumb-down").click()   # the reasons form open, too
    assert page.evaluate("import('/static/js/feedback.js').then(m => m.TAGS)") == \
        [[t.name, t.polarity, t.label] for t in feedback_tags.TAGS]
    assert serious_violations(page) == []

    page.set_viewport_size({"width": 375, "height": 740})
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375     # nothing sticks out
    assert page.locator("#sidebar").bounding_box()["x"] < 0 or not page.locator("#sidebar").is_visible()
    page.locator("#menu").click()                         # the list is a drawer
    page.wait_for_function("document.querySelector('#sidebar').getBoundingClientRect().x >= 0")
    assert page.locator("#search").evaluate("e => e === document.activeElement")
    assert serious_violations(page) == []
    page.keyboard.press("Escape")
    page.wait_for_function("!document.body.classList.contains('drawer-open')")

    page.goto(f"{server.url}/ops?token={ADMIN}")           # the operator page, same check
    page.wait_for_function("window.opsCharts && window.opsCharts.reward", timeout=20_000)
    assert serious_violations(page) == []
    assert errors == []
    ctx.close()


PIECES = """async () => {
  const md = await import('/static/js/markdown.js');
  const { Tree } = await import('/static/js/tree.js');
  const html = (text) => { const d = document.createElement('div'); d.append(md.renderFragment(text)); return d; };
  const evil = html('[a](javascript:alert(1)) [b](data:text/html,x) [c](https://example.org) ![i](https://example.org/x.png)'
                    + ' <iframe src="https://example.org"></iframe> <a href="javascript:alert(2)">d</a>');
  const t = new Tree();
  const add = (id, parentId, msgId, extra = {}) => t.add({ id, parentId, msgId, feedback: {}, ...extra });
  add('r1', '', 'm1'); add('r2', 'r1', 'm2'); add('r3', 'r1', 'm3'); add('r4', 'r1', 'm2');
  add('r5', 'r4', 'm5'); add('c1', 'r5', 'm6', { candidates: ['c1', 'c2'] });
  add('c2', 'r5', 'm6', { candidates: ['c1', 'c2'], feedback: { choose: 'chosen' } });
  return {
    split: [md.splitPoint('para one\\n\\npara two'), md.splitPoint('para one\\n\\npara two', true),
            md.splitPoint('```py\\nx\\n\\ny\\n```\\nmore'), md.splitPoint('1. a\\n\\n   b\\n\\n2. c\\nx')],
    links: [...evil.querySelectorAll('a')].map((a) => [a.textContent, a.getAttribute('href'), a.getAttribute('rel'), a.target]),
    elements: evil.querySelectorAll('img, iframe, script').length,
    text: evil.textContent,
    branch: t.branchTo('r5'), messages: t.messages('r1'), groups: t.groups('r1', 'm2'), pair: t.groups('r5', 'm6'),
    descend: t.descend(''), afterRemember: (t.remember(['r1', 'r2']), t.descend('')),
  };
}"""


def test_renderer_and_tree_pure_pieces(server, page):
    page.goto(server.url + "/")
    got = page.evaluate(PIECES)
    # blocks end at a blank line before a line at the margin, or after a closing fence; the open tail waits
    assert got["split"] == [0, 10, len("```py\nx\n\ny\n```\n"), len("1. a\n\n   b\n\n")]
    # only http(s) links survive, as new-tab links without opener/referrer; no picture, no frame is loaded
    assert got["links"] == [["c", "https://example.org", "noopener noreferrer", "_blank"],
                            ["[image: i]", "https://example.org/x.png", "noopener noreferrer", "_blank"]]
    assert got["elements"] == 0 and 'href="javascript:alert(2)"' in got["text"]
    assert got["branch"] == ["r1", "r4", "r5"] and got["messages"] == ["m2", "m3"]
    assert got["groups"] == [["r2"], ["r4"]] and got["pair"] == [["c1", "c2"]]
    # down from the first turn: the newest message and answer at each fork, a compare pair's chosen one;
    # once a branch was shown, that one
    assert got["descend"] == "r3" and got["afterRemember"] == "r2"
