"""Fresh replies from the served policy to logged prompts, rewarded by the reward model.

A run has a few dozen logged replies with a user signal, and rarely two to the same question.
A trusted reward model (learner/reward_model.py) can judge more than the users did: the run
samples `TrainConfig.onpolicy.n` new replies to each of up to `onpolicy.prompts` logged prompts
from the parent adapter -- the policy being served, so the behavior log-probs are its own -- and
rewards each as a reply no user signalled is rewarded (reward model x
RewardConfig.model_reward_weight, below an observed signal). Replies to one question that the
reward model ranks apart give KTO and the policy gradient a contrast the logs rarely hold.

These replies train only: the gate judges on logged, held-out replies, never on them.
"""
from __future__ import annotations

import time

import torch

from core.modeling import cache_argument_name
from core.sampling import SamplingParams, sample_batch
from learner.reward_model import extract_features
from learner.samples import Sample

ROWS_PER_FORWARD = 32  # sampling batch: bounds the KV cache, not the result


def pick_prompts(samples: list[Sample], limit: int) -> list[Sample]:
    """The last sampled (not greedy) reply of each distinct prompt, from the end of the run's
    list (its newest logged replies, and the unscored ones the reward model rewarded, come
    last), at most `limit`: its prompt and sampling params are what new replies are drawn with."""
    seen: set[tuple[int, ...]] = set()
    out: list[Sample] = []
    for s in reversed(samples):
        key = tuple(s.prompt_ids)
        if s.greedy or key in seen:
            continue
        seen.add(key)
        out.append(s)
        if len(out) >= limit:
            break
    return out


@torch.no_grad()
def sample_replies(policy, prompts: list[list[int]], params: list[SamplingParams], *, max_new_tokens: int,
                   seeds: list[int], stop_ids: set[int] | None = None) -> list[tuple[list[int], list[float]]]:
    """One reply per row: (token ids up to and including the stop token, their behavior
    log-probs). The serving engine's sampler (core.sampling.sample_batch), each row with its own
    seeded generator, so a reply's log-probs are those a server would have logged for it.
    stop_ids: default the policy's (EOS and the chat template's end marks)."""
    stop = policy.stop_ids if stop_ids is None else stop_ids
    out: list[tuple[list[int], list[float]]] = []
    for i in range(0, len(prompts), ROWS_PER_FORWARD):
        rows = slice(i, i + ROWS_PER_FORWARD)
        out += _sample_chunk(policy, prompts[rows], params[rows], max_new_tokens, stop, seeds[rows])
    return out


def _sample_chunk(policy, prompts, params, max_new_tokens, stop_ids, seeds):
    model, pad_id, device = policy.model, policy.pad_id, policy.device
    B, P = len(prompts), max(len(p) for p in prompts)
    limit = [max(1, min(max_new_tokens, p.max_new_tokens)) for p in params]   # each row's own cap too
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P), dtype=torch.long)
    for b, p in enumerate(prompts):   # left-padded: every row's next token is the last column
        ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[b, P - len(p):] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    cache_arg = cache_argument_name(model)
    res = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    next_pos = pos[:, -1:] + 1                                         # [B, 1]
    replies: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    done = [False] * B
    for _ in range(max(limit)):
        tok, lp = sample_batch(res.logits[:, -1], params, gens)      # [B], [B]
        for b, (t, v) in enumerate(zip(tok.tolist(), lp.tolist())):
            if not done[b]:
                replies[b].append(t)
                logps[b].append(v)
                done[b] = t in stop_ids or len(replies[b]) >= limit[b]
        if all(done):
            break
        # finished rows keep decoding (one batch) and their tokens are dropped above
        attn = torch.cat([attn, attn.new_ones((B, 1))], dim=1)
        res = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
                    use_cache=True, logits_to_keep=1, **{cache_arg: getattr(res, cache_arg)})
        next_pos = next_pos + 1
    return list(zip(replies, logps))


def add_replies(policy, train: list[Sample], rm, *, n: int, max_prompts: int, reward_weight: float,
                parent: str, run: int, seed: int, max_reply_tokens: int) -> dict:
    """Sample `n` replies to each of up to `max_prompts` prompts of `train` from the policy (the
    parent adapter, before training), reward them with `rm`, append them to `train`. Returns
    what it did, for the manifest. `run` (the version being trained) varies the seeds per run."""
    t0 = time.perf_counter()
    picked = pick_prompts(train, max_prompts) if n > 0 else []
    if not picked:
        return {"added": 0, "why": "no sampled logged reply to draw a prompt from" if n > 0 else "onpolicy.n is 0"}
    # no longer than the longest logged reply, nor than each row's own max_new_tokens
    max_new = max(1, min(max_reply_tokens, max(len(s.reply_ids) for s in train)))
    rows = [s for s in picked for _ in range(n)]
    seeds = [seed * 1_000_003 + run * 10_007 + i for i in range(len(rows))]
    drawn = sample_replies(policy, [s.prompt_ids for s in rows], [s.params for s in rows], max_new_tokens=max_new,
                           seeds=seeds)
    feats = extract_features(policy.model, [(s.prompt_ids, reply) for s, (reply, _) in zip(rows, drawn)],
                             policy.device)
    rewards = [float(v) for v in rm.reward(feats) * reward_weight]
    train.extend(Sample(reply_id=f"onpolicy:{run}:{i}", user_id="", prompt_ids=s.prompt_ids, reply_ids=reply,
                        behavior_logp=logp, reward=r, adapter_version=parent, params=s.params, onpolicy=True)
                 for i, (s, (reply, logp), r) in enumerate(zip(rows, drawn, rewards)))
    spread = [max(rewards[k:k + n]) - min(rewards[k:k + n]) for k in range(0, len(rewards), n)]
    return {"added": len(rows), "prompts": len(picked), "per_prompt": n, "max_new_tokens": max_new,
            "reward_mean": sum(rewards) / len(rewards), "reward_spread_mean": sum(spread) / len(spread),
            "mean_tokens": sum(len(r) for r, _ in drawn) / len(drawn), "seconds": time.perf_counter() - t0}
