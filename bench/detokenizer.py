"""Streaming a reply's text: the incremental detokenizer both engines use against decoding the
whole reply again at every token (what they did before), side by side in one process, on the
real tokenizer (SmolLM2's, which the tiny model borrows) and replies of 256 to 2,048 tokens of
this repository's docs. The two produce the same text (checked here too); the cost per token of
the full decode grows with the reply, the incremental one does not.
Prints a table, writes bench/results/detokenizer.json.

    python bench/detokenizer.py [--lengths 256,1024,2048] [--runs 3]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import table, write_json

REPO = Path(__file__).resolve().parents[1]


def full_decode(tok, ids: list[int]) -> str:
    sent = ""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n], skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            sent = text
    return sent


def incremental(tok, ids: list[int]) -> str:
    from service.engine.detokenizer import IncrementalDetokenizer
    detok = IncrementalDetokenizer(tok)
    return "".join(detok.push(t) for t in ids) + detok.tail()


def per_token_us(fn, tok, ids: list[int], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(tok, ids)
        best = min(best, time.perf_counter() - t0)
    return best / len(ids) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="256,1024,2048")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from core.modeling import ensure_tiny
    tok = AutoTokenizer.from_pretrained(ensure_tiny(REPO / "var" / "models"))
    text = "\n".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        seq = ids[:n]
        assert incremental(tok, seq) == tok.decode(seq, skip_special_tokens=True)
        full, inc = per_token_us(full_decode, tok, seq, args.runs), per_token_us(incremental, tok, seq, args.runs)
        rows.append({"tokens": n, "full_decode_us_per_token": round(full, 1), "incremental_us_per_token": round(inc, 1),
                     "speedup": round(full / inc, 1)})
    print(table(rows, list(rows[0])))
    print("(a shared machine: compare the two columns of one run, not runs with each other)")
    print(write_json("detokenizer", {"runs": args.runs, "rows": rows}))


if __name__ == "__main__":
    main()
