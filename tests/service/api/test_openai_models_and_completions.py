"""GET /v1/models lists the base model and every adapter version this server serves (with
parent, created and role); `<model>@<version>` pins one. POST /v1/completions takes a text
or token ids (a logged prompt replayed) and is logged like a chat reply."""
from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from core.keys import Keys
from tests.support.clients import http, openai_client
from tests.support.models import publish_adapter, save_random_adapter
from tests.support.processes import ADMIN
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
TINY_ID = "rewardloop/tiny-random-llama"


def test_models_list_versions_with_parent_and_role_and_pin_them(server_factory, models_dir, redis_url, tmp_path, rdb):
    srv = server_factory(REWARDLOOP_TEMPERATURE=0)
    data = Path(srv.env["REWARDLOOP_DATA_DIR"])
    publish = lambda seed, **kw: publish_adapter(redis_url, srv.prefix, data,
                                                 save_random_adapter(models_dir, tmp_path / f"a{seed}", seed), TINY_ID, **kw)
    v1 = publish(1)
    v2 = publish(2, mode="canary", canary_share=0.5)
    c = openai_client(srv, "mo")

    def resident():
        status, body = http("GET", srv.url + "/admin/adapters", token=ADMIN)
        return {v1, v2} <= set(body["server"]["loaded"])
    wait_for(resident, 60, "the adapter to be resident", srv)
    cards = {m.id: m for m in c.models.list().data}
    assert list(cards) == [TINY_ID, f"{TINY_ID}@base", f"{TINY_ID}@{v1}", f"{TINY_ID}@{v2}"]
    assert cards[TINY_ID].model_extra["rewardloop"]["stable"] == v1
    one, two = cards[f"{TINY_ID}@{v1}"].model_extra, cards[f"{TINY_ID}@{v2}"].model_extra
    assert one["parent"] == f"{TINY_ID}@base" and two["parent"] == f"{TINY_ID}@{v1}"
    assert (one["rewardloop"]["role"], two["rewardloop"]["role"]) == ("stable", "canary")
    assert cards[f"{TINY_ID}@{v2}"].created > 0 and one["root"] == TINY_ID
    assert c.models.retrieve(f"{TINY_ID}@v{v2}").id == f"{TINY_ID}@{v2}"
    assert c.models.retrieve("rewardloop").id == TINY_ID
    msg = [{"role": "user", "content": "hi"}]
    texts = {}
    for v in ("base", v1, v2):
        resp = c.chat.completions.create(model=f"rewardloop@{v}", messages=msg, max_tokens=6)
        assert resp.model == f"{TINY_ID}@{v}"
        assert rdb.hget(Keys(srv.prefix).reply(resp.id), "adapter_version") == v
        texts[v] = resp.choices[0].message.content
    assert len(set(texts.values())) == 3, texts   # three different weights answered
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=f"rewardloop@{v1}", messages=msg, extra_body={"adapter_version": v2})
    assert err.value.param == "adapter_version"


def test_completion_with_text_then_replayed_token_ids(server, rdb):
    c = openai_client(server, "mo")
    first = c.completions.create(model="rewardloop", prompt="Once upon a time", max_tokens=6, temperature=0.9,
                                 seed=4, logprobs=0)
    rec = rdb.hgetall(Keys(server.prefix).reply(first.id))
    prompt_ids = json.loads(rec["prompt_ids"])
    assert rec["api"] == "openai_completion" and rec["text"] == first.choices[0].text and rec["user_id"] == "mo"
    assert json.loads(rec["prompt_messages"]) == [] and rec["user_text"] == "Once upon a time"
    lp = first.choices[0].logprobs
    assert lp.token_logprobs == json.loads(rec["logprobs"]) and len(lp.tokens) == len(json.loads(rec["token_ids"]))
    assert lp.text_offset[0] == 0 and first.usage.prompt_tokens == len(prompt_ids)
    again = c.completions.create(model="rewardloop", prompt=prompt_ids, max_tokens=6, temperature=0.9, seed=4)
    rec2 = rdb.hgetall(Keys(server.prefix).reply(again.id))
    assert json.loads(rec2["prompt_ids"]) == prompt_ids and rec2["token_ids"] == rec["token_ids"]
    assert again.choices[0].text == first.choices[0].text and again.choices[0].logprobs is None
    chunks = list(c.completions.create(model="rewardloop", prompt=prompt_ids, max_tokens=6, temperature=0.9,
                                       seed=4, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == first.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == first.usage.completion_tokens


def test_completion_n_and_stop(server, rdb):
    c = openai_client(server, "mo")
    full = c.completions.create(model="rewardloop", prompt="abc", max_tokens=10, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    resp = c.completions.create(model="rewardloop", prompt="abc", max_tokens=10, temperature=0, stop=stop, n=2)
    assert [ch.text for ch in resp.choices] == [text[:text.find(stop)]] * 2
    ids = [ch.model_extra["reply_id"] for ch in resp.choices]
    assert json.loads(rdb.hget(Keys(server.prefix).reply(ids[1]), "candidates")) == ids


@pytest.mark.parametrize("body, param", [
    ({"prompt": [[1, 2], [3]]}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [10 ** 9]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "logprobs": 2}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "best_of": 2}, "best_of"),
    ({"prompt": "x", "max_tokens": 10 ** 6}, "max_tokens"),
    ({"prompt": list(range(3, 3000))}, "prompt"),
])
def test_bad_completions_name_the_field(server, body, param):
    status, payload = http("POST", server.url + "/v1/completions", {"model": "rewardloop", **body},
                           token=server.token())
    assert status == 400 and payload["error"]["param"] == param, payload
