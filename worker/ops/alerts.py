"""Send a drift alarm to people: a log line always, and a JSON POST to REWARDLOOP_ALERT_WEBHOOK
when it is set. A webhook that is down, slow or answers an error is logged and never stops the
monitor (the alarm is already stored in the `ops:alarms` stream)."""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0


def payload(alarm: dict) -> dict:
    """The JSON body: the stored alarm plus a one-line `text` (Slack-style webhooks show it)."""
    return {"text": f"rewardloop drift alarm: {alarm.get('message', '')}", "alarm": alarm}


def send(alarm: dict, webhook: str | None, timeout_s: float = TIMEOUT_S) -> bool:
    """True when the webhook accepted it (2xx); False when unset or it failed (logged)."""
    log.warning("drift alarm [%s %s version %s]: %s%s", alarm.get("detector"), alarm.get("metric"),
                alarm.get("version") or "-", alarm.get("message"),
                f" -> {alarm['action']}" if alarm.get("action") else "")
    if not webhook:
        return False
    body = json.dumps(payload(alarm), default=str).encode()
    req = urllib.request.Request(webhook, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "rewardloop-drift"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
        log.error("alert webhook %s failed: %s (the alarm is stored in the ops:alarms stream)", webhook, exc)
        return False
