import time
import pytest
pytestmark = [pytest.mark.integration, pytest.mark.browser]

def test_probe(server, page, rdb):
    page.goto(server.url + "/")
    page.wait_for_selector("[data-testid=status][data-state=connected]", timeout=30_000)
    page.get_by_test_id("input").fill("hi")
    page.get_by_test_id("input").press("Enter")
    page.wait_for_selector("article[data-reply-id][data-finish-reason]", timeout=60_000)
    rid = page.locator("article[data-reply-id]").last.get_attribute("data-reply-id")
    print("vis", page.evaluate("document.visibilityState"), page.evaluate(f"rlDwell('{rid}')"))
    cdp = page.context.new_cdp_session(page)
    win = cdp.send("Browser.getWindowForTarget")
    print(win)
    try:
        cdp.send("Browser.setWindowBounds", {"windowId": win["windowId"], "bounds": {"windowState": "minimized"}})
    except Exception as e:
        print("ERR", e)
    time.sleep(0.5)
    print("minimized", page.evaluate("document.visibilityState"), page.evaluate(f"rlDwell('{rid}')"))
    time.sleep(1)
    print("minimized", page.evaluate("document.visibilityState"), page.evaluate(f"rlDwell('{rid}')"))
    cdp.send("Browser.setWindowBounds", {"windowId": win["windowId"], "bounds": {"windowState": "normal"}})
    time.sleep(0.3)
    print("back", page.evaluate("document.visibilityState"), page.evaluate(f"rlDwell('{rid}')"))
    r = page.evaluate("""() => { const s = rl.socket; s.close(); document.querySelector('[data-testid=thumb-up]').click(); return [s.readyState, rl.outbox()]; }""")
    print(r)
    time.sleep(1.5)
    print(page.evaluate("[rl.socket && rl.socket.readyState, rl.outbox()]"))
