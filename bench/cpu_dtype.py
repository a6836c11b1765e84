"""bf16 or float32 on this CPU? The built-in engine's choice for REWARDLOOP_DEVICE=auto on a CPU.

The same model in float32 and in bf16, in one process, runs interleaved (fp32, bf16, fp32, ...):
  speed     static batched `model.generate` (every row decodes exactly --tokens, greedy) at 1 and
            16 rows, and the prefill of a ~1k-token prompt; tokens/s and bf16/fp32 ratios;
  quality   on greedy fp32 replies to the serving prompts: the per-token |log p_bf16 - log p_fp32|
            (the gap the learner's truncated importance ratios would absorb if replies were served
            in bf16 and recomputed in fp32) and how many greedy tokens bf16 reproduces; and the
            learning bench's own judge (bench/learning.py offline_eval, every population's hidden
            taste) on --judge sampled replies to the held-out questions, bf16 minus fp32, paired.
Prints a table, writes bench/results/cpu_dtype.json.

    python bench/cpu_dtype.py [--model smollm2] [--tokens 64] [--runs 3] [--rows 1,16]
"""
from __future__ import annotations

import argparse
import copy
import time

from common import mean, table, write_json

PROMPTS = ["Explain in a few sentences why the sky is blue.", "Give me three tips for a good night's sleep.",
           "What is a prime number? Answer briefly.", "Write two lines about the sea."]


def timed_generate(model, x, tokens: int) -> float:
    import torch
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=tokens, min_new_tokens=tokens,
                       do_sample=False)
    return time.perf_counter() - t0


def timed_prefill(model, x) -> float:
    import torch
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - t0


def token_logps(model, ids, n_prompt: int):
    import torch
    with torch.no_grad():
        logits = model(ids).logits[0, n_prompt - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, n_prompt:, None])[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (default) | tiny-random | a model folder")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    ap.add_argument("--runs", type=int, default=3, help="interleaved repetitions per measurement")
    ap.add_argument("--rows", default="1,16", help="batch sizes of the decode comparison")
    ap.add_argument("--context", type=int, default=1000, help="prompt tokens of the prefill comparison")
    ap.add_argument("--judge", type=int, default=96, help="held-out replies per dtype judged by each taste (0: skip)")
    args = ap.parse_args()
    import torch

    from core.modeling import load_model
    from core.settings import ServerSettings
    from tests.support.processes import MODELS
    lm = load_model(args.model, MODELS, "cpu")
    fp32 = lm.model.eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16).eval()
    models = {"float32": fp32, "bf16": bf16}
    tok = lm.tokenizer
    system = ServerSettings().system_prompt

    def chat(prompt: str) -> list[int]:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        return tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]

    ids = chat(PROMPTS[0])
    rows = []
    for n in [int(r) for r in args.rows.split(",")]:
        x = torch.tensor([ids] * n)
        for m in models.values():
            timed_generate(m, x, 4)                                     # warm-up
        walls = {name: [] for name in models}
        for _ in range(args.runs):
            for name, m in models.items():
                walls[name].append(timed_generate(m, x, args.tokens))
        tok_s = {name: n * args.tokens / mean(w) for name, w in walls.items()}
        rows.append({"run": f"decode {n} row(s) x {args.tokens}", "float32": tok_s["float32"], "bf16": tok_s["bf16"],
                     "ratio bf16/fp32": tok_s["bf16"] / tok_s["float32"], "unit": "tok/s"})
    long = (ids * (args.context // len(ids) + 1))[:args.context]
    x = torch.tensor([long])
    walls = {name: [] for name in models}
    for m in models.values():
        timed_prefill(m, x)
    for _ in range(args.runs):
        for name, m in models.items():
            walls[name].append(timed_prefill(m, x))
    pre = {name: args.context / mean(w) for name, w in walls.items()}
    rows.append({"run": f"prefill {args.context} tokens", "float32": pre["float32"], "bf16": pre["bf16"],
                 "ratio bf16/fp32": pre["bf16"] / pre["float32"], "unit": "tok/s"})

    gaps, agree, total = [], 0, 0
    for prompt in PROMPTS:
        p = torch.tensor([chat(prompt)])
        with torch.no_grad():
            g32 = fp32.generate(p, max_new_tokens=args.tokens, do_sample=False)
            g16 = bf16.generate(p, max_new_tokens=args.tokens, do_sample=False)
        gaps += (token_logps(bf16, g32, p.shape[1]) - token_logps(fp32, g32, p.shape[1])).abs().tolist()
        a, b = g32[0, p.shape[1]:].tolist(), g16[0, p.shape[1]:].tolist()
        same = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        agree, total = agree + same, total + len(a)
    gaps.sort()
    quality = {"logprob_gap_median": gaps[len(gaps) // 2], "logprob_gap_p95": gaps[int(0.95 * (len(gaps) - 1))],
               "logprob_gap_max": gaps[-1], "greedy_prefix_agreement": agree / total, "tokens": total}
    judged = []
    if args.judge:
        from learning import judge, mean_ci, offline_replies
        from populations import POPULATIONS
        # one set of replies per dtype (same questions and seed), judged by every taste
        r32, r16 = (offline_replies(args.model, None, args.judge, 40, 0, dtype=dt)
                    for dt in (torch.float32, torch.bfloat16))
        for name, taste in POPULATIONS.items():
            s32, s16 = judge(taste, r32), judge(taste, r16)
            d = mean_ci([b - a for a, b in zip(s32, s16)])
            judged.append({"taste": name, "float32": sum(s32) / len(s32), "bf16": sum(s16) / len(s16),
                           "bf16 - fp32": d["mean"], "95% CI": f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]",
                           "n": d["n"]})
    print(f"\nbf16 vs float32 on the CPU ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
          f"threads), model={args.model}, {args.runs} interleaved runs")
    print(table(rows, ["run", "float32", "bf16", "ratio bf16/fp32", "unit"]))
    print("quality on greedy fp32 replies: " + ", ".join(f"{k} {v:.4g}" for k, v in quality.items()))
    if judged:
        print("\nthe learning bench's judge on held-out questions (sampled, temperature 0.7, 40 tokens)")
        print(table(judged, ["taste", "float32", "bf16", "bf16 - fp32", "95% CI", "n"]))
    path = write_json("cpu_dtype", {"args": vars(args), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                    "threads": torch.get_num_threads(), "rows": rows, "quality": quality,
                                    "judge": judged})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
