"""Does the loop learn? Simulated users with a hidden taste chat with the live system for a few
rounds; after each round the learner trains and publishes a new adapter.

Live parts started here: Redis (embedded unless REWARDLOOP_REDIS_URL is set), one server, a
Celery worker (queues rewards,ops) and beat, so feedback travels the real path
websocket -> events -> reward ledger -> final rewards. The learner runs in this process
(runner.run_once, publish mode stable) once per round instead of waiting for beat.

Reported per adapter version, with 95% confidence intervals:
  online   the simulated users' verdicts (+1 / 0 / -1) on replies the server actually served
           with that version (after a publish the bench waits up to 60 s for the server to report the
           hot swap, so the next round chats with the new version), and
           the mean final reward the ledger gave them;
  offline  fresh replies to the bench questions generated here with base + that adapter, judged
           by the same hidden taste (independent of hot swap).
TRL's KTOTrainer (bench/trl_baseline.py) is trained on the very samples the learner trained on,
with the same LoRA shape, epochs, learning rate and mini-batch size, from the base model; its
adapter is judged offline like the versions and (--kto-online) published and served for one more
round of the same simulated users. Without `trl` (pip install -e '.[bench]') the JSON says why it
was skipped. For each: reward lift per 1,000 feedback events (offline mean minus base mean, per
training sample used, x1000) and learner seconds per sample. JSON goes to --out; a PNG chart to
--png: offline reward, lift per 1,000 events and seconds per sample, one panel each (matplotlib when
installed, else a small built-in bar-chart writer; grey base, blue rewardloop, orange KTO).

    .venv/bin/python bench/learning.py                       # smollm2 (+ the KTO baseline)
    .venv/bin/python bench/learning.py --model tiny-random --rounds 2 --users 4
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench import trl_baseline
from bench.common import table
from bench.learning_chart import chart_panels, png_chart
from bench.learning_stack import start_stack, wait_for_canary_verdict, wait_for_rewards, wait_for_swap
from bench.populations import HELDOUT, POPULATIONS
from bench.simusers import PopUser, run_users, thumbs_reward
from core.keys import Keys
from core.registry import Registry
from core.settings import Settings
from learner.config import load_train_config
from learner.dataset import build_dataset
from learner.runner import run_once
from tests.support.processes import MODELS, REPO
from worker.rewards.config import load_reward_config


def mean_ci(values: list[float]) -> dict:
    """Mean with a normal-approximation 95% interval."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci": [None, None]}
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return {"n": n, "mean": m, "ci": [m - half, m + half]}


def _onpolicy(stats: dict) -> dict:
    return (stats.get("reward_model") or {}).get("onpolicy") or {}


def _run_s(stats: dict) -> float:
    """One learner run's training seconds: its optimisation loop and its on-policy sampling."""
    return (stats.get("training") or {}).get("loop_seconds", 0) + _onpolicy(stats).get("seconds", 0)


def offline_eval(model_name: str, adapter_dir: Path | None, n: int, max_new_tokens: int, seed: int,
                 taste=POPULATIONS["concise"]) -> list[float]:
    """Judge fresh replies to the HELD-OUT questions (never asked in training) from base (+ adapter)
    with the population's hidden taste. Same questions, order and sampling seed for every version,
    so scores pair up reply by reply."""
    return judge(taste, offline_replies(model_name, adapter_dir, n, max_new_tokens, seed))


def judge(taste, replies: list[tuple[str | None, str, str]]) -> list[float]:
    return [float(taste.judge(answer, text, finish)) for answer, text, finish in replies]


def offline_replies(model_name: str, adapter_dir: Path | None, n: int, max_new_tokens: int, seed: int,
                    dtype=None, questions=None, loaded=None, with_ids: bool = False,
                    temperature: float = 0.7) -> list[tuple]:
    """(expected answer, reply text, finish reason) of fresh sampled replies to the held-out
    questions (or `questions`), from base (+ adapter), in `dtype` (bench/cpu_dtype.py: bf16) or
    the model's own. `loaded`: a core.modeling.LoadedModel to reuse; `with_ids`: each tuple also
    carries (prompt ids, reply ids with the stop token, as a server logs them); `temperature`: every
    figure uses 0.7 (bench/headroom.py also asks for sharper replies)."""
    import torch

    from core.modeling import load_model
    loaded = loaded or load_model(model_name, MODELS, device="cpu")
    model = loaded.model if dtype is None else loaded.model.to(dtype)  # bench/cpu_dtype.py: bf16 replies
    if adapter_dir is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    tok = loaded.tokenizer
    tok.padding_side = "left"
    system = Settings().system_prompt
    pool = questions or HELDOUT
    qs = [pool[i % len(pool)] for i in range(n)]
    prompts = [tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                       add_generation_prompt=True, tokenize=False) for q, _ in qs]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=temperature, top_p=0.9, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id)  # [n, P + T]
    replies = []
    for i, ((q, a), row) in enumerate(zip(qs, out[:, batch["input_ids"].shape[1]:])):
        ids = row.tolist()
        stopped = tok.eos_token_id in ids
        text = tok.decode(ids[:ids.index(tok.eos_token_id)] if stopped else ids, skip_special_tokens=True)
        reply = (a, text, "stop" if stopped else "length")
        if with_ids:
            prompt_ids = batch["input_ids"][i][batch["attention_mask"][i] == 1].tolist()
            reply += (prompt_ids, ids[:ids.index(tok.eos_token_id) + 1] if stopped else ids)
        replies.append(reply)
    return replies


def _per(seconds, n) -> float | None:
    return seconds / n if seconds and n else None


def trl_missing() -> str | None:
    """Why the KTOTrainer baseline cannot run here, or None."""
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[bench]') -- KTOTrainer comparison not run"
    return None


def lift(version: dict, base: dict, events: int) -> dict:
    """Offline mean minus base mean (95% CI, independent samples) and the same per 1,000 feedback events."""
    if version["mean"] is None or base["mean"] is None:
        return {"lift": None, "lift_ci": [None, None], "per_1k_events": None, "per_1k_ci": [None, None]}
    d = version["mean"] - base["mean"]
    half = math.hypot(version["ci"][1] - version["mean"], base["ci"][1] - base["mean"])
    k = 1000 / events if events else None
    return {"lift": d, "lift_ci": [d - half, d + half], "per_1k_events": d * k if k else None,
            "per_1k_ci": [(d - half) * k, (d + half) * k] if k else [None, None]}


def paired_difference(scores: dict, ours: list[str], runs: dict, kto: dict) -> dict | None:
    """The last rewardloop version against KTO on the same questions, reply by reply: a paired
    interval is far tighter than comparing two independent means."""
    if not ours or "kto" not in scores:
        return None
    v = ours[-1]
    diffs = [a - b for a, b in zip(scores[v], scores["kto"])]
    ours_lift = (sum(scores[v]) - sum(scores["base"])) / len(diffs)
    kto_lift = (sum(scores["kto"]) - sum(scores["base"])) / len(diffs)
    ours_per_1k = ours_lift * 1000 / max(runs.get(v, {}).get("events") or 1, 1)
    kto_per_1k = kto_lift * 1000 / max(kto.get("samples") or 1, 1)
    return {"version": v, "difference": mean_ci(diffs),
            "lift_per_1k_ratio": round(ours_per_1k / kto_per_1k, 3) if kto_per_1k > 0 else None}


def comparison_table(base: dict, base_online: dict, rows: list[dict]) -> str:
    """Versions (events cumulative over learner rounds) and the KTO baseline against the base model."""
    def ci(lo, hi):
        return "" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"

    def verdict(v):
        return "" if v["mean"] is None else f"{v['mean']:+.2f} (n={v['n']})"
    out = [{"version": "base", "trainer": "-", "events": 0, "offline mean": base["mean"],
            "95% CI": ci(*base["ci"]), "online verdict": verdict(base_online)}]
    for c in rows:
        out.append({"version": c["version"], "trainer": c["trainer"], "events": c["events"],
                    "offline mean": c["offline"]["mean"], "95% CI": ci(*c["offline"]["ci"]), "lift": c["lift"],
                    "lift/1k events": c["per_1k_events"], "lift/1k 95% CI": ci(*c["per_1k_ci"]),
                    "train s/sample": c["train_s_per_sample"], "wall s/sample": c["wall_s_per_sample"],
                    "online verdict": verdict(c["online_verdict"])})
    return table(out, ["version", "trainer", "events", "offline mean", "95% CI", "lift", "lift/1k events",
                       "lift/1k 95% CI", "train s/sample", "wall s/sample", "online verdict"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 (default) | tiny-random | a model folder")
    p.add_argument("--population", default="concise", choices=sorted(POPULATIONS),
                   help="the simulated users' taste and feedback style (bench/populations.py)")
    p.add_argument("--no-signal-policy", default=None, choices=["exclude", "default", "model"],
                   help="RewardConfig.no_signal_policy for this run (default: the packaged config's)")
    p.add_argument("--rounds", type=int, default=2, help="chat-then-train rounds")
    p.add_argument("--users", type=int, default=6, help="simulated users chatting at once")
    p.add_argument("--sessions", type=int, default=1, help="conversations per user per round")
    p.add_argument("--max-turns", type=int, default=2, help="turns a pleased user goes on for")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one learner setting for an experiment (as `rewardloop train --set`, e.g. "
                        "step.kl_target=0.2); without it the bench runs the learner's defaults")
    p.add_argument("--kto-epochs", type=int, default=None,
                   help="KTOTrainer's epochs (default: as many as the learner takes for that many samples, "
                        "learner/trust_region.schedule)")
    p.add_argument("--eval", type=int, default=48, help="offline replies to held-out questions judged per version")
    p.add_argument("--reward-wait", type=float, default=3.0, help="reward wait window in seconds")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--canary-share", type=float, default=None,
                   help="REWARDLOOP_CANARY_SHARE for the server and the learner (default: the product's)")
    p.add_argument("--drift-min-samples", type=int, default=None,
                   help="REWARDLOOP_DRIFT_MIN_SAMPLES: the live comparison's floor per side; given, the bench "
                        "waits for beat's verdict on a canary before each learner run (a promoted one is its parent)")
    p.add_argument("--no-kto", action="store_true", help="skip the TRL KTOTrainer baseline")
    p.add_argument("--rerank-n", type=int, default=4,
                   help="also judge reranking N base candidates with the reward model the loop trained "
                        "(REWARDLOOP_RERANK_N; below 2: skip)")
    p.add_argument("--kto-online", action=argparse.BooleanOptionalAction, default=True,
                   help="also publish the KTO adapter and let the simulated users chat with it for one round")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "learning.json"))
    p.add_argument("--png", default=str(REPO / "bench" / "results" / "learning.png"))
    p.add_argument("--samples-out", default=None,
                   help="also write every sample each learner run trained on (JSON lines, with its round) here, "
                        "for bench/learning_replay.py")
    args = p.parse_args(argv)

    t_start = time.time()
    if args.samples_out:
        Path(args.samples_out).write_text("")  # appended to after each learner run
    work = Path(tempfile.mkdtemp(prefix="rl-bench-learning-"))
    env, procs, server, url, embedded = start_stack(args, work)  # stopped in the finally below
    keys = Keys("bench:")
    r = redis.Redis.from_url(url, decode_responses=True)
    settings = Settings(redis_url=url, prefix="bench:", data_dir=work / "data", model_cache_dir=MODELS,
                        model=args.model, device="cpu", publish_mode="stable", min_samples=1,
                        # the learner runs inside this process, which also judges: it must not renice it
                        # (bench/loop.py runs the real learner worker, chat first included)
                        learner_machine="dedicated",
                        reward_config=work / "reward.toml",
                        **({"canary_share": args.canary_share} if args.canary_share is not None else {}))
    cfg = load_train_config(None, args.overrides)   # the learner's defaults, unless --set says otherwise
    reward_cfg = load_reward_config(settings.reward_config)
    taste = POPULATIONS[args.population]
    rounds = []
    used: list = []  # every sample a committed learner run trained on, once, in order (the KTO data)
    seen_ids: set[str] = set()
    runs: dict[str, dict] = {}  # version -> cumulative events and learner seconds up to that version
    spent = {"events": 0, "train_s": 0.0, "wall_s": 0.0}
    kto: dict = {"skipped": trl_missing()} if trl_missing() else {}
    if args.no_kto:
        kto = {"skipped": "--no-kto"}
    served: dict[str, list[float]] = {}  # version -> the simulated users' verdicts on what it served
    try:
        users = [PopUser(f"sim{i}", taste, seed=args.seed * 1000 + i, max_turns=args.max_turns)
                 for i in range(args.users)]
        for k in range(args.rounds):
            t0 = time.time()
            for u in users:
                u.seed += 7919  # new questions every round
            turns = run_users(server, users, args.sessions)
            for t in turns:
                served.setdefault(t.adapter_version, []).append(thumbs_reward(t.verdict))
            t_chat = time.time() - t0
            judged = {t.reply_id for t in turns}  # every final reply gets an entry, 'excluded' included
            finals = wait_for_rewards(r, keys, judged, timeout=60 + 2 * args.reward_wait)
            reg = Registry(r, keys, settings.data_dir)
            canary = (wait_for_canary_verdict(r, keys, reg, time.time()) if args.drift_min_samples else None)
            # what this run will read: same cursor, filters and split as inside run_once
            snapshot = build_dataset(r, keys, cfg, reward_cfg, reg.state()["next_version"])
            res = run_once(settings, cfg, progress=True, by="bench")
            took, swap = [], None
            if res.state == "published":
                swap = wait_for_swap(r, keys, str(res.version))  # the next round chats with it
            if res.state in ("published", "rejected"):
                took = trl_baseline.used_by_run(snapshot, (res.stats.get("stream_range") or [None, None])[1])
                # a run replays older rewards (TrainConfig.replay.window): count each feedback-derived
                # sample once, and give KTO each one once, so both sides see the same data
                took = [t for t in took if t.reply_id not in seen_ids]
                seen_ids.update(t.reply_id for t in took)
                spent["events"] += len(took)
                # the learner's own sampling and scoring of on-policy replies is training work too
                spent["train_s"] += _run_s(res.stats)
                spent["wall_s"] += res.stats.get("train_seconds") or 0
                used += took
                if args.samples_out:
                    trl_baseline.dump_samples(Path(args.samples_out), took, k)
                runs[str(res.version)] = dict(spent)
            rounds.append({"round": k, "turns": len(turns), "final_rewards": len(finals),
                           "served": sorted({t.adapter_version for t in turns}), "chat_s": t_chat,
                           "verdict": mean_ci([thumbs_reward(t.verdict) for t in turns]),
                           "learner": {"state": res.state, "version": res.version, "reason": res.reason,
                                       "seconds_per_step": (res.stats.get("training") or {}).get("seconds_per_step"),
                                       # this run alone: its loop seconds over the samples it trained on
                                       # (replayed ones included), like for like with KTO's one training
                                       "run_s_per_trained_sample": _per(_run_s(res.stats), res.stats.get("samples_used")),
                                       # over the logged samples only (on-policy replies not counted)
                                       "run_s_per_logged_sample": _per(_run_s(res.stats),
                                                                       (res.stats.get("samples_used") or 0)
                                                                       - _onpolicy(res.stats).get("added", 0)),
                                       "train_s": res.stats.get("train_seconds"),
                                       "samples_used": res.stats.get("samples_used"), "kto_rows": len(took),
                                       "onpolicy": _onpolicy(res.stats) or None,
                                       "trust_region": (res.stats.get("training") or {}).get("trust_region"),
                                       "server_swap": swap, "parent": res.stats.get("parent"),
                                       "canary_before": canary,
                                       "gate": (res.stats.get("gate") or {}).get("stats")}})
            print(f"round {k}: {len(turns)} turns ({t_chat:.0f}s), {len(finals)} final rewards, verdict mean "
                  f"{rounds[-1]['verdict']['mean']:+.2f}; learner {res.state} v{res.version} {res.reason}"
                  + (f" (canary v{canary['version']}: {canary.get('action') or canary.get('reason')})" if canary else ""),
                  flush=True)
        # online: everything served, grouped by the version that served it
        online: dict[str, dict] = {}
        ledger: dict[str, list[float]] = {}
        for _, e in r.xrange(keys.rewards):
            if e.get("state") in ("rewarded", "defaulted") and e.get("reward"):  # 'excluded' has no reward
                ledger.setdefault(e.get("adapter_version", "base"), []).append(float(e["reward"]))
        for v in sorted(set(ledger) | set(served)):
            online[v] = {"ledger_reward": mean_ci(ledger.get(v, [])), "user_verdict": mean_ci(served.get(v, []))}
        reg = Registry(r, keys, settings.data_dir)
        versions = ["base"] + [v for v in sorted(reg.state()["versions"], key=int)
                               if reg.state()["versions"][v]["state"] == "published"]
        if not kto and not used:
            kto = {"skipped": "the learner trained on no samples, so there is nothing to train KTO on"}
        if not kto:
            print(f"trl KTOTrainer: training on the learner's {len(used)} samples", flush=True)
            try:
                kto = trl_baseline.train_kto(args.model, MODELS, used, cfg, work / "kto", progress=True,
                                             epochs=args.kto_epochs)
            except Exception as exc:  # keep the rounds' results; the JSON says what broke
                import traceback
                traceback.print_exc()
                kto = {"failed": f"{type(exc).__name__}: {exc}"}
        if "adapter_dir" in kto:
            print(f"trl KTOTrainer: {kto['steps']} steps, {kto['train_s']:.1f}s training, loss "
                  f"{kto['first_loss']} -> {kto['last_loss']}, logged ids re-tokenized equal: prompts "
                  f"{kto['token_match']['prompt']:.0%}, replies {kto['token_match']['completion']:.0%}", flush=True)
            if args.kto_online:
                kto["online_version"] = v_kto = trl_baseline.publish(url, "bench:", settings.data_dir,
                                                                     Path(kto["adapter_dir"]), kto["base_model"])
                kto["online_swap"] = wait_for_swap(r, keys, v_kto)
                for u in users:
                    u.seed += 7919
                turns = run_users(server, users, args.sessions)
                kto["online_served"] = sorted({t.adapter_version for t in turns})
                kto["online"] = {"user_verdict": mean_ci([thumbs_reward(t.verdict) for t in turns
                                                          if t.adapter_version == v_kto])}
                print(f"trl KTOTrainer online (as v{v_kto}): served by {kto['online_served']}, verdict mean "
                      f"{kto['online']['user_verdict']['mean']}", flush=True)
    finally:
        server.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        r.close()
        if embedded is not None:
            embedded.stop()
    offline, scores = {}, {}
    if "adapter_dir" in kto:
        versions.append("kto")
    for v in versions:
        folder = None if v == "base" else Path(kto["adapter_dir"]) if v == "kto" else reg.version_dir(v)
        scores[v] = offline_eval(args.model, folder, args.eval, args.max_new_tokens, args.seed, taste)
        offline[v] = mean_ci(scores[v])
        print(f"offline {v:>5}: mean {offline[v]['mean']:+.3f}  95% CI [{offline[v]['ci'][0]:+.3f}, "
              f"{offline[v]['ci'][1]:+.3f}]  n={offline[v]['n']}", flush=True)

    from bench.rerank import loop_rerank_both  # here: bench/rerank.py imports this module
    last = [v for v in versions if v not in ("base", "kto")]
    rerank = loop_rerank_both(args, settings.data_dir, taste, last[-1] if last else None,
                              reg.version_dir(last[-1]) if last else None)

    comparison = []
    for v in versions[1:]:
        cost = runs.get(v, {}) if v != "kto" else {"events": kto["samples"], "train_s": kto["train_s"],
                                                   "wall_s": kto["wall_s"]}
        n = cost.get("events") or 0
        served_v = (kto.get("online") if v == "kto" else online.get(v)) or {}
        comparison.append({"version": v, "trainer": "trl KTOTrainer" if v == "kto" else "rewardloop",
                           "events": n, "offline": offline[v], **lift(offline[v], offline["base"], n),
                           "online_verdict": served_v.get("user_verdict", mean_ci([])),
                           "train_s_per_sample": cost["train_s"] / n if n else None,
                           "wall_s_per_sample": cost["wall_s"] / n if n else None})
    print(comparison_table(offline["base"], (online.get("base") or {}).get("user_verdict", mean_ci([])),
                           comparison))
    head_to_head = paired_difference(scores, [v for v in versions if v not in ("base", "kto")], runs, kto)
    if head_to_head:
        print(f"head to head, same questions: v{head_to_head['version']} minus KTO = "
              f"{head_to_head['difference']['mean']:+.3f} (95% CI [{head_to_head['difference']['ci'][0]:+.3f}, "
              f"{head_to_head['difference']['ci'][1]:+.3f}], n={head_to_head['difference']['n']}); lift/1k "
              f"events ratio {head_to_head['lift_per_1k_ratio']}", flush=True)
    paired_lift = mean_ci([a - b for a, b in zip(scores[last[-1]], scores["base"])]) if last else None
    if paired_lift:
        print(f"held-out lift, paired by question: v{last[-1]} minus base = {paired_lift['mean']:+.3f} "
              f"(95% CI [{paired_lift['ci'][0]:+.3f}, {paired_lift['ci'][1]:+.3f}], n={paired_lift['n']})", flush=True)
    report = {"model": args.model, "args": vars(args), "population": taste.__dict__, "rounds": rounds,
              "paired_lift": {"version": last[-1] if last else None, **(paired_lift or {})},
              "online": online, "offline": offline, "offline_scores": scores, "trl_kto": kto,
              "comparison": comparison, "head_to_head": head_to_head, "rerank": rerank,
              "chart": chart_panels(offline, comparison),
              "definitions": {
                  "events": "training samples (final rewards) used: rewardloop cumulative over its runs up to "
                            "that version; KTO the union of them all",
                  "lift": "offline mean reward minus the base model's (95% CI from both intervals)",
                  "per_1k_events": "lift / events * 1000",
                  "train_s_per_sample": "seconds inside the optimisation loop / events (rewardloop: the "
                                        "training stats' loop_seconds, plus the seconds spent sampling and "
                                        "scoring on-policy replies, of every run up to this version, each "
                                        "retraining its replay window; KTO: trainer.train() once)",
                  "run_s_per_trained_sample": "(rounds[].learner) one run's loop seconds / the samples it "
                                              "trained on, replayed ones included: like for like with KTO's "
                                              "train_s_per_sample (on-policy replies count as samples; "
                                              "run_s_per_logged_sample does not count them)",
                  "wall_s_per_sample": "whole learner run / events (rewardloop: model load, training, gate; "
                                       "KTO: model load, dataset preparation, training, saving)"},
              "hot_swap_seen": any(v != "base" for rd in rounds for v in rd["served"]),
              "seconds": time.time() - t_start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    png_chart(Path(args.png), report["chart"])
    print(f"wrote {out} and {args.png} in {report['seconds']:.0f}s")
    if not report["hot_swap_seen"]:
        print("note: the server served only 'base' -- no hot swap observed; the offline table carries the result")
    return 0


if __name__ == "__main__":
    sys.exit(main())
