"""Learner inputs as the server logs them: replies the tiny model really sampled (token ids
and behavior log-probs are real), written to Redis as reply hashes plus final reward entries,
and the samples the learner builds from them."""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from core.keys import Keys
from core.sampling import SamplingParams, sample_token
from learner.config import StepSettings
from learner.probe_check import SafetyProbeSettings

QUESTIONS = ["What is the capital of France?", "How do I boil an egg?", "Name a prime number.",
             "Why is the sky blue?", "What is 2 + 2?", "Say hello.", "Give me a colour.", "What day is it?"]


@dataclass(frozen=True)
class Logged:
    reply_id: str
    user_id: str
    prompt_ids: list
    token_ids: list
    logprobs: list
    params: SamplingParams


# one cheap pass, trained weights kept as they are, a gate KL budget nothing reaches (1.5 x 10)
QUICK_STEP = StepSettings(mode="fixed", lr=5e-3, min_steps=1, kl_target=10.0)
# the gate's safety probe off: a tiny random model nudged by a step or two often collapses into one
# repeated word ("chambers chambers ..."), which the default scorer may read as unsafe. Runs that test
# something else leave the probe out, as they loosen the gate's other checks;
# tests/learner/test_safety_probe.py tests it.
NO_PROBE = SafetyProbeSettings(enabled=False)


def as_policy(loaded, model=None):
    """A LoadedModel (or another model beside its tokenizer) as the learner's Policy."""
    from core.modeling import default_stop_ids
    from learner.policy import Policy
    return Policy(model=loaded.model if model is None else model, tokenizer=loaded.tokenizer, model_id=loaded.model_id,
                  device=loaded.device, dtype=loaded.dtype, pad_id=loaded.tokenizer.pad_token_id,
                  stop_ids=default_stop_ids(loaded.tokenizer))


@torch.no_grad()
def generate(loaded, prompt_ids: list[int], params: SamplingParams, n_tokens: int, seed: int):
    """Sample n_tokens (no early stop) with service.sampling; return (token ids, behavior log-probs)."""
    gen = torch.Generator().manual_seed(seed)
    ids, logps = list(prompt_ids), []
    for _ in range(n_tokens):
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1]  # [V]
        tok, lp = sample_token(logits, params, gen)
        ids.append(tok)
        logps.append(lp)
    return ids[len(prompt_ids):], logps


def make_logged(loaded, n: int, n_tokens: int = 6, params: SamplingParams | None = None,
                users: int = 8, tag: str = "r") -> list[Logged]:
    params = params or SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=n_tokens, seed=0)
    tok = loaded.tokenizer
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" (#{i})"}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(prompt, dict):
            prompt = prompt["input_ids"]
        reply, logps = generate(loaded, list(prompt), params, n_tokens, seed=1000 + i)
        out.append(Logged(f"{tag}{i}", f"u{i % users}", list(prompt), reply, logps, params))
    return out


def write_logged(r, keys: Keys, items: list[Logged], reward_of, version: str = "base",
                 opt_out: str = "0") -> list[str]:
    """Reply hashes plus one final reward entry each; returns the stream ids."""
    ids = []
    for item in items:
        r.hset(keys.reply(item.reply_id), mapping={
            "reply_id": item.reply_id, "user_id": item.user_id, "prompt_ids": json.dumps(item.prompt_ids),
            "token_ids": json.dumps(item.token_ids), "logprobs": json.dumps(item.logprobs),
            "params": json.dumps(item.params.to_dict()), "adapter_version": version,
            "model_id": "rewardloop/tiny-random-llama", "finish_reason": "length", "opt_out": opt_out})
        ids.append(r.xadd(keys.rewards, {
            "reply_id": item.reply_id, "user_id": item.user_id, "session_id": "s_" + item.reply_id,
            "adapter_version": version, "state": "rewarded", "reward": repr(float(reward_of(item))),
            "config_hash": "test", "user_weight": "1.0", "opt_out": opt_out, "finalized_at": "0"}))
    return ids


def favoured(item: Logged) -> bool:
    """The hidden preference of the synthetic users: even-numbered replies are liked."""
    return int(item.reply_id.lstrip("abcdefghijklmnopqrstuvwxyz")) % 2 == 0


def fake(i: int, user: str = "u0") -> Logged:
    """A logged reply with made-up ids and log-probs (no model)."""
    return Logged(f"x{i}", user, [1, 2, 3], [4, 5, 6 + i], [-0.5, -1.0, -2.0],
                  SamplingParams(temperature=0.7, top_p=0.9))


def as_samples(items, reward_of=lambda i: 0.0) -> list:
    """learner.dataset.Sample of each logged reply, on base, with `reward_of(item)`."""
    from learner.dataset import Sample
    return [Sample(reply_id=i.reply_id, user_id=i.user_id, prompt_ids=i.prompt_ids, reply_ids=i.token_ids,
                   behavior_logp=i.logprobs, reward=reward_of(i), adapter_version="base", params=i.params)
            for i in items]
