"""The printed table and the aims, from the run's JSON payload."""
from __future__ import annotations

AIMS = {"vs_static": 0.8, "vs_batch1": 20.0, "swap_p95_s": 0.2}   # issue 30's aims, on a GPU box


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = [h for h, _ in cols]
    body = [[_fmt(r.get(k)) for _, k in cols] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def aims(payload: dict) -> list[dict]:
    """The issue's aims against what this run measured (met: None when not measured)."""
    out = []
    at64 = [r for r in payload.get("serving", []) if r["sessions"] == 64]
    best = max(at64, key=lambda r: r["engine_tok_s"], default=None)
    for key, label in (("vs_static", "64 sessions: engine / static batched generate"),
                       ("vs_batch1", "64 sessions: engine / batch-1 generate")):
        value = best[key] if best else None
        out.append({"aim": label, "target": f">= {AIMS[key]}", "value": value,
                    "met": None if value is None else value >= AIMS[key],
                    "note": f"max_batch {best['max_batch']}, {best['model']}" if best else "not measured"})
    swap = payload.get("hotswap") or {}
    p95 = swap.get("swap_p95_s")
    out.append({"aim": f"hot swap p95 under {swap.get('streams_at_start', '?')} streams", "target": "< 0.2 s",
                "value": p95, "met": None if p95 is None else p95 < AIMS["swap_p95_s"],
                "note": f"{swap.get('swaps_under_load')} swaps under load" if swap else "not measured"})
    for row in payload.get("learner", []):
        if row.get("samples_per_s"):
            out.append({"aim": f"learner samples/s vs CPU ({row['model']})", "target": "reported",
                        "value": row.get("vs_cpu"), "met": None,
                        "note": f"{row['samples_per_s']} vs {row['cpu_samples_per_s']} ({row['cpu_source']})"})
    return out


def render(payload: dict) -> str:
    env = payload.get("env", {})
    parts = [f"== gpu_check {payload.get('mode')} on {env.get('device_name', env.get('device'))} "
             f"({payload.get('dtype')}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"peft {env.get('peft')}; free {env.get('free_gib', '-')} of {env.get('total_gib', '-')} GiB) =="]
    parts += ["", "-- checks --", table(payload.get("checks", []), [
        ("check", "name"), ("dtype", "dtype"), ("ok", "ok"), ("s", "seconds"), ("detail", "brief")])]
    if payload.get("serving"):
        parts += ["", f"-- serving ({payload['serving'][0]['tokens']} new tokens, greedy; tok/s total) --",
                  table(payload["serving"], [
                      ("model", "model"), ("sessions", "sessions"), ("max_batch", "max_batch"),
                      ("engine", "engine_tok_s"), ("static", "static_tok_s"), ("batch-1", "batch1_tok_s"),
                      ("eng/static", "vs_static"), ("eng/b1", "vs_batch1"), ("ttft p50", "engine_ttft_p50_s"),
                      ("ttft p95", "engine_ttft_p95_s"), ("static ttft", "static_ttft_s"),
                      ("eng GiB", "engine_peak_gib"), ("static GiB", "static_peak_gib")])]
    if payload.get("learner"):
        parts += ["", "-- learner (one run, default TrainConfig) --", table(payload["learner"], [
            ("model", "model"), ("samples", "samples"), ("reply tok", "reply_tokens"), ("s/sample", "s_per_sample"),
            ("samples/s", "samples_per_s"), ("cpu samples/s", "cpu_samples_per_s"), ("x cpu", "vs_cpu"),
            ("peak GiB", "peak_gib"), ("KL to parent", "kl_to_parent")])]
    swap = payload.get("hotswap")
    if swap:
        parts += ["", "-- hot swap --", table([swap], [
            ("streams", "streams"), ("swaps", "swaps"), ("p50 s", "swap_p50_s"), ("p95 s", "swap_p95_s"),
            ("max s", "swap_max_s"), ("max err", "own_error_max"), ("tol", "tolerance"),
            ("torn err", "half_loaded_error_min"), ("gap max s", "token_gap_max_s")])]
    parts += ["", "-- aims (for a GPU box) --", table(aims(payload), [
        ("aim", "aim"), ("target", "target"), ("value", "value"), ("met", "met"), ("note", "note")])]
    if payload.get("skipped"):
        parts += ["", "skipped: " + "; ".join(payload["skipped"])]
    for err in payload.get("errors", []):
        parts += [f"ERROR {err}"]
    parts += ["", f"{'ALL CHECKS PASSED' if payload.get('ok') else 'SOME CHECKS FAILED'} in "
                  f"{payload.get('wall_s')} s; JSON: {payload.get('out')}"]
    return "\n".join(parts)
