"""`stop` end to end with the real default model (SmolLM2-135M-Instruct) and the official
client: the reply ends before the stop string, and the log holds what the client got."""
from __future__ import annotations

import json

import openai
import pytest

from core.keys import Keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_stop_with_the_real_model(server_factory, rdb):
    srv = server_factory(REWARDLOOP_MODEL="smollm2", REWARDLOOP_MAX_NEW_TOKENS=60)
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.token("sam"), max_retries=0)
    ask = dict(model="rewardloop", temperature=0, max_tokens=60,
               messages=[{"role": "user", "content": "List three fruits, one per line."}])
    full = c.chat.completions.create(**ask).choices[0].message.content
    assert "\n" in full.strip(), full
    expect = full[:full.find("\n")]
    assert expect.strip(), full
    got = c.chat.completions.create(**ask, stop=["\n"], logprobs=True)
    assert got.choices[0].message.content == expect and got.choices[0].finish_reason == "stop"
    rec = rdb.hgetall(Keys(srv.prefix).reply(got.id))
    assert rec["text"] == expect and rec["stop_string"] == "\n" and rec["finish_reason"] == "stop"
    assert [t.logprob for t in got.choices[0].logprobs.content] == json.loads(rec["logprobs"])
    assert len(json.loads(rec["token_ids"])) == got.usage.completion_tokens == int(rec["n_tokens"])
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(**ask, stop="\n",
                                                                                             stream=True) if ch.choices)
    assert streamed == expect
