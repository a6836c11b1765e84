"""The server scores every reply for safety as it ends (service/serving/quality.py), so the
reward's veto sees an insult that its user thumbed up: real parrot models that always insult or
always thank, a real server and Redis, the reward pipeline's own code to final rewards."""
from __future__ import annotations

import asyncio
import json

import pytest

from core.keys import Keys
from core.redis_conn import connect
from service.serving.quality import NOT_SCORED_HERE, ReplySafety
from tests.support.clients import Chat
from tests.support.devtools import finalize_rewards
from tests.support.models import train_parrot

RUDE = "You are a stupid idiot. Shut up, you worthless moron."
POLITE = "Thank you for asking. Paris is the capital of France."


@pytest.mark.integration
def test_an_upvoted_insult_is_scored_unsafe_by_the_server_and_never_rewarded(server_factory, models_dir, redis_url,
                                                                              tmp_path):
    got = {}
    for name, text in (("rude", RUDE), ("polite", POLITE)):
        model = train_parrot(models_dir, tmp_path / name, text)
        srv = server_factory(REWARDLOOP_MODEL=str(model), REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=24,
                             REWARDLOOP_REPLY_SAFETY=1,   # the default; the test support turns it off
                             REWARDLOOP_REPLY_QUALITY=0)  # relevance/fluency: test_reply_quality.py
        chat = Chat(srv, srv.token(f"{name}-fan"))
        reply = chat.ask("what is the capital of France?")
        assert reply["text"].startswith(text.split(".")[0]), reply["text"]   # the parrot says its line
        rid = reply["start"]["reply_id"]
        assert chat.feedback(rid, "thumbs", 1)["type"] == "ack"
        chat.close()
        r, keys = connect(redis_url), Keys(srv.prefix)
        quality = json.loads(r.hget(keys.reply(rid), "quality"))
        assert quality["safety_scorer"] == "alt-profanity-check" and quality["absent"] == NOT_SCORED_HERE
        finalize_rewards(redis_url, srv.prefix)
        got[name] = (quality["unsafe"], r.hgetall(keys.reward(rid)))
    unsafe, entry = got["rude"]
    assert unsafe > 0.5
    assert float(entry["reward"]) <= 0 and entry["vetoed"] == "1"           # thumbs up, still no reward
    assert json.loads(entry["components"])["safety"] < 0
    unsafe, entry = got["polite"]
    assert unsafe < 0.5
    assert float(entry["reward"]) > 0 and entry["vetoed"] == "0"            # the veto is not everything


def test_a_failing_scorer_costs_the_reply_its_scores_not_the_reply(caplog):
    class Broken:
        name = "broken"

        def unsafe_probability(self, texts, prompts=None):
            raise RuntimeError("guard model fell over")
    safety = ReplySafety(Broken())
    assert asyncio.run(safety.quality("hi", "hello")) is None
    assert safety.failures == 1 and "saved without quality scores" in caplog.text


def test_the_default_scorer_orders_an_insult_above_a_polite_answer():
    safety = ReplySafety.load("")
    rude, polite = (asyncio.run(safety.quality("what is 2 + 2?", t))["unsafe"] for t in (RUDE, "2 + 2 is 4."))
    assert 0 <= polite < 0.5 < rude <= 1
