"""Does a run land near the KL target whatever its size? The learner's defaults on real replies.

The default model answers the bench's training questions (bench/populations.py TRAIN) the way a
server would (chat template, system prompt, temperature 0.7, top-p 0.9, 40 new tokens), with the
learner's own sampler, so the behavior log-probs are exact; a population's hidden taste rewards
each reply (+1 / 0 / -1). Replies to the held-out questions are the gate's held-out set. Then,
from the base model each time, one learner run per size (default 20 and 400 samples) with the
default TrainConfig (KL target, steps from the samples), and -- for the record -- one run with the
settings the product shipped before (learning rate 1e-4, one pass). Per run: steps, the KL
controller's and the scale search's readings, the KL the gate reads on all held-out replies,
loop seconds.

    flock /tmp/rl-heavy.lock .venv/bin/python bench/step_size.py            # smollm2, ~15 min on 2 cores
    .venv/bin/python bench/step_size.py --model tiny-random --sizes 20 80 --out /tmp/s.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench.populations import HELDOUT, POPULATIONS, TRAIN
from core.sampling import SamplingParams
from learner import gate
from learner.config import StepSettings, TrainConfig
from learner.onpolicy import sample_replies
from learner.policy import Policy
from learner.run_stages import train_to_target
from learner.samples import Dataset, Sample
from tests.support.processes import MODELS, REPO

SYSTEM = "You are a helpful assistant. Answer briefly and clearly."
BEFORE = StepSettings(mode="fixed", lr=1e-4, min_steps=1, max_epochs=1)   # the shipped settings until now


def logged(policy: Policy, questions, n: int, taste, seed: int, tag: str) -> list[Sample]:
    """n replies (questions cycled) sampled as a server would, rewarded by the taste."""
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=40)
    rows = [questions[i % len(questions)] for i in range(n)]
    prompts = [policy.tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                     {"role": "user", "content": q}],
                                                    add_generation_prompt=True, tokenize=True, return_dict=False)
               for q, _ in rows]
    prompts = [list(p["input_ids"] if isinstance(p, dict) else p) for p in prompts]
    drawn = sample_replies(policy, prompts, [params] * n, max_new_tokens=40, seeds=[seed * 100_003 + i for i in range(n)])
    out = []
    for i, ((question, answer), prompt, (reply, logp)) in enumerate(zip(rows, prompts, drawn)):
        finish = "stop" if reply and reply[-1] in policy.stop_ids else "length"
        text = policy.tokenizer.decode(reply, skip_special_tokens=True)
        out.append(Sample(reply_id=f"{tag}{i}", user_id=f"u{i % 12}", prompt_ids=prompt, reply_ids=reply,
                          behavior_logp=logp, reward=float(taste.judge(answer, text, finish)), adapter_version="base",
                          params=params))
    return out


def one_run(policy: Policy, train: list[Sample], holdout: list[Sample], cfg: TrainConfig) -> dict:
    policy.wrap(cfg.lora, cfg.seed, None)
    try:
        data = Dataset(train=train, holdout=holdout, pairs=[], last_id=None, last_pair_id=None)
        view = gate.snapshot_parent(policy, holdout)
        stats = train_to_target(policy, data, cfg, view, progress=True)
        kl = gate.kl_to_parent(policy, holdout, view)
    finally:
        policy.release()
    region = stats.get("trust_region") or {}
    return {"samples": len(train), "steps": stats["steps"], "epochs": stats["epochs"], "lr_last": stats["lr_last"],
            "kl_control": stats["kl_control"], "scale": region.get("alpha"), "scale_readings": region.get("readings"),
            "landed": region.get("landed"), "kl_holdout": kl, "kl_budget": cfg.kl_budget,
            "loop_seconds": round(stats["loop_seconds"], 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--population", default="concise", choices=sorted(POPULATIONS))
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 400])
    p.add_argument("--holdout", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "step_size.json"))
    args = p.parse_args(argv)
    t0 = time.time()
    policy = Policy.load(args.model, MODELS, "cpu")
    taste = POPULATIONS[args.population]
    pool = logged(policy, TRAIN, max(args.sizes), taste, args.seed, "t")
    holdout = logged(policy, HELDOUT, args.holdout, taste, args.seed + 1, "h")
    print(f"sampled {len(pool) + len(holdout)} replies in {time.time() - t0:.0f}s; mean reward "
          f"{sum(s.reward for s in pool) / len(pool):+.2f}", flush=True)
    runs = [dict(one_run(policy, pool[:n], holdout, TrainConfig()), settings="default") for n in sorted(args.sizes)]
    runs.append(dict(one_run(policy, pool[:min(args.sizes)], holdout, TrainConfig(step=BEFORE)), settings="before"))
    for run in runs:
        print(f"{run['settings']:8s} {run['samples']:4d} samples {run['steps']:3d} steps: scale {run['scale']}, "
              f"KL on held-out {run['kl_holdout']:.4f} (target {TrainConfig().step.kl_target}), "
              f"{run['loop_seconds']}s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "target": TrainConfig().step.kl_target, "runs": runs,
                               "seconds": round(time.time() - t0)}, indent=2))
    print(f"wrote {out} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
