"""Serving-time reranking (REWARDLOOP_RERANK_N): N candidates sampled at once, scored by the
learned reward model on the base model's hidden states, the best one streamed and logged with
its own seed; without a reward model for this base model, one candidate as before."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from core.keys import Keys
from core.redis_conn import connect
from core.sampling import SamplingParams
from learner.reward_model import RewardModel, extract_features
from service.engine.core import EndEvent, Engine, GenerationRequest, TokenEvent
from service.serving.rerank import RerankHandle, RewardScorer, candidate_requests
from tests.support.clients import Chat


def _reward_model(model, tok, model_id: str, seed: int = 0, trusted: bool = True) -> RewardModel:
    """A reward model whose P[liked] is a random direction of the base model's features."""
    ids = tok("hello there", add_special_tokens=False)["input_ids"]
    dim = extract_features(model, [(ids, ids)], "cpu").shape[1]
    rng = np.random.default_rng(seed)
    return RewardModel(mean=np.zeros(dim), std=np.ones(dim), weights={"liked": rng.normal(size=dim) / 4},
                       bias={"liked": 0.0}, base_model=model_id, metrics={"trusted": trusted})


@pytest.fixture(scope="module")
def loaded(models_dir):
    from core.modeling import load_model
    return load_model("tiny-random", models_dir, "cpu")


def test_the_best_scored_candidate_is_streamed_and_scores_are_the_reward_models(loaded, loop, tmp_path):
    rm = _reward_model(loaded.model, loaded.tokenizer, loaded.model_id)
    rm.save(tmp_path)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.device, stop_token_ids={-1})
    engine.start()
    scorer = RewardScorer(engine, tmp_path, loaded.model_id)
    prompt = list(range(3, 30))
    try:
        async def run(cancel: bool = False):
            reqs = candidate_requests(GenerationRequest(prompt, SamplingParams(max_new_tokens=10, seed=41)), 4)
            handle = RerankHandle([engine.submit(r) for r in reqs], reqs, scorer, scorer.current())
            ended = []
            handle.on_end = lambda: ended.append(1)
            if cancel:
                handle.cancel()
            events = [e async for e in handle]
            await asyncio.sleep(0.05)   # on_end is scheduled with call_soon_threadsafe
            return handle, events, ended
        handle, events, ended = asyncio.run_coroutine_threadsafe(run(), loop).result(120)
        assert [r.params.seed for r in handle.requests] == [41, 42, 43, 44] and ended == [1]
        tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
        assert isinstance(events[-1], EndEvent) and len(tokens) == 10 and events[-1].peak_rows >= 2
        # the scores are the reward model's, recomputed here; the streamed one has the highest
        assert handle.scores is not None and handle.chosen == int(np.argmax(handle.scores))
        assert handle.params.seed == 41 + handle.chosen and handle.summary()["n"] == 4
        recomputed = rm.predict(extract_features(loaded.model, [(prompt, tokens)], "cpu"))[0]
        assert recomputed == pytest.approx(handle.scores[handle.chosen], abs=1e-4)
        assert len(set(np.round(handle.scores, 6))) > 1, "all candidates scored alike: the choice saw nothing"
        # cancelled before it ran: every candidate ends cancelled, nothing is scored, on_end still fires once
        handle, events, ended = asyncio.run_coroutine_threadsafe(run(cancel=True), loop).result(120)
        assert events[-1].finish_reason == "cancelled" and handle.scores is None and ended == [1]
        # a reward model that fails to score (here: the wrong feature width) costs the choice, not the reply
        broken = RewardModel(mean=np.zeros(3), std=np.ones(3), weights={"liked": np.ones(3)}, bias={"liked": 0.0})

        async def broken_run():
            reqs = candidate_requests(GenerationRequest(prompt, SamplingParams(max_new_tokens=6, seed=5)), 3)
            handle = RerankHandle([engine.submit(r) for r in reqs], reqs, scorer, broken)
            return handle, [e async for e in handle]
        handle, events = asyncio.run_coroutine_threadsafe(broken_run(), loop).result(120)
        assert handle.scores is None and handle.chosen == 0 and events[-1].finish_reason == "length"
        assert handle.params.seed == 5
        # the chat service reranks sampled replies only: N greedy copies would be the same reply
        from core.settings import ServerSettings
        from service.serving.chat import ChatService
        chat = ChatService(engine, None, loaded.tokenizer, ServerSettings(rerank_n=3, data_dir=str(tmp_path)),
                           loaded.model_id)

        async def submitted(params):
            handle = chat._submit(GenerationRequest(prompt, params))
            _ = [e async for e in handle]
            return handle
        sampled = asyncio.run_coroutine_threadsafe(submitted(SamplingParams(max_new_tokens=4)), loop).result(120)
        greedy = asyncio.run_coroutine_threadsafe(submitted(SamplingParams(temperature=0, max_new_tokens=4)),
                                                  loop).result(120)
        assert isinstance(sampled, RerankHandle) and not isinstance(greedy, RerankHandle)
    finally:
        engine.shutdown()


def test_an_untrusted_reward_model_one_for_another_base_model_or_a_corrupt_one_is_not_used(loaded, tmp_path):
    scorer = RewardScorer(None, tmp_path, loaded.model_id)
    assert scorer.current() is None and scorer.refused is None          # none yet
    _reward_model(loaded.model, loaded.tokenizer, "someone/else").save(tmp_path)
    assert scorer.current() is None and "someone/else" in scorer.refused
    _reward_model(loaded.model, loaded.tokenizer, loaded.model_id, trusted=False).save(tmp_path)
    assert scorer.current() is None and scorer.refused.startswith("not trusted")
    _reward_model(loaded.model, loaded.tokenizer, loaded.model_id).save(tmp_path)
    assert scorer.current() is not None and scorer.refused is None
    (tmp_path / "reward_model" / "heads.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "reward_model" / "manifest.json").touch()
    import os
    st = (tmp_path / "reward_model" / "manifest.json").stat()
    os.utime(tmp_path / "reward_model" / "manifest.json", (st.st_atime, st.st_mtime + 5))
    assert scorer.current() is None and scorer.refused.startswith("unreadable")


@pytest.mark.integration
def test_a_server_with_rerank_n_streams_and_logs_the_chosen_candidate(server_factory, loaded, redis_url):
    from core.history import History
    from learner.dataset import load_reply
    server = server_factory(REWARDLOOP_RERANK_N="3", REWARDLOOP_MAX_NEW_TOKENS="12")
    r, keys = connect(redis_url), Keys(server.prefix)
    chat = Chat(server, server.token("rena"))
    from tests.support.clients import http
    from tests.support.processes import ADMIN

    def rerank_status():
        return http("GET", server.url + "/admin/adapters", token=ADMIN)[1]["rerank"]
    try:
        assert rerank_status() == {"n": 3, "reward_model": "none yet: one candidate per reply"}
        plain = chat.ask("hello")                       # no reward model yet: one candidate
        assert r.hget(keys.reply(plain["start"]["reply_id"]), "rerank") is None
        _reward_model(loaded.model, loaded.tokenizer, loaded.model_id).save(server.env["REWARDLOOP_DATA_DIR"])
        reply = chat.ask("Say something")
        assert rerank_status() == {"n": 3, "reward_model": "in use"}
        rec = r.hgetall(keys.reply(reply["start"]["reply_id"]))
        rerank, params = json.loads(rec["rerank"]), json.loads(rec["params"])
        assert rerank["n"] == 3 and len(rerank["scores"]) == 3 and rerank["chosen"] == int(np.argmax(rerank["scores"]))
        assert params["seed"] == rerank["seeds"][rerank["chosen"]] and rec["text"] == reply["text"]
        assert int(rec["peak_rows"]) >= 2
        # the learner trains on it but keeps it out of the gate's counterfactual estimate
        history = History(r, keys)
        assert load_reply(history, reply["start"]["reply_id"], 256).reranked is True
        assert load_reply(history, plain["start"]["reply_id"], 256).reranked is False
    finally:
        chat.close()


def test_scoring_reads_base_features_and_leaves_the_served_adapter_as_it_was(models_dir, loop, tmp_path):
    """The server's model carries LoRA slots; scoring must see the base model and must not
    leave the layers switched differently from what the engine believes."""
    from core.modeling import load_model
    from service.engine.slots import AdapterSlots
    from tests.support.models import save_random_adapter
    own = load_model("tiny-random", models_dir, "cpu")    # its own copy: the slots wrap it in place
    prompt, reply = list(range(3, 30)), list(range(40, 52))
    base_feats = extract_features(own.model, [(prompt, reply)], "cpu")
    engine = Engine(own.model, own.tokenizer, own.device, stop_token_ids={-1})
    engine.adapters = AdapterSlots(engine)
    engine.adapters.load("1", save_random_adapter(models_dir, tmp_path / "v1", seed=3))
    engine.start()
    rm = _reward_model(own.model, own.tokenizer, own.model_id)
    scorer = RewardScorer(engine, tmp_path, own.model_id)

    def greedy(adapter):
        async def run():
            req = GenerationRequest(prompt, SamplingParams(temperature=0, max_new_tokens=8), adapter)
            return [e.token_id for e in [e async for e in engine.submit(req)] if isinstance(e, TokenEvent)]
        return asyncio.run_coroutine_threadsafe(run(), loop).result(120)
    try:
        on_v1, on_base = greedy("1"), greedy(None)
        assert on_v1 != on_base, "the adapter changes nothing: the test could not see a wrong switch"
        greedy("1")                                          # version 1 is the active one now
        score = asyncio.run_coroutine_threadsafe(scorer.score(rm, prompt, [reply]), loop).result(120)[0]
        assert score == pytest.approx(float(rm.predict(base_feats)[0]), abs=1e-5)
        assert greedy("1") == on_v1 and greedy(None) == on_base
        greedy(None)
        asyncio.run_coroutine_threadsafe(scorer.score(rm, prompt, [reply]), loop).result(120)
        assert greedy(None) == on_base and greedy("1") == on_v1
    finally:
        engine.shutdown()
