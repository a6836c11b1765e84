"""The incremental detokenizer streams exactly what decoding the whole reply at every token
streamed (what both engines did before it): the same pieces, the same held-back half
characters, the same tail, on random token sequences of the real tokenizer (SmolLM2's, which
the tiny model borrows) weighted towards multi-byte pieces and special tokens; and the text a
stop string leaves is the same."""
from __future__ import annotations

import random

import pytest

from service.engine.detokenizer import IncrementalDetokenizer
from service.serving.stop_strings import StopScanner

N_SEQUENCES = 600


@pytest.fixture(scope="module")
def tok(models_dir):
    from transformers import AutoTokenizer

    from core.modeling import ensure_tiny
    return AutoTokenizer.from_pretrained(ensure_tiny(models_dir))


def full_decode_pieces(tok, ids: list[int], stop_ids: set[int]) -> tuple[list[str], str]:
    """The reference: the engines' code before the incremental detokenizer, verbatim in its
    rules. Each token decodes the whole reply; a stop token carries no text and ends it."""
    sent, pieces = "", []
    for n, t in enumerate(ids, 1):
        if t in stop_ids:
            pieces.append("")
            ids = ids[:n]
            break
        text = tok.decode(ids[:n], skip_special_tokens=True)
        piece = ""
        if not text.endswith("\ufffd"):
            piece, sent = text[len(sent):], text
        pieces.append(piece)
    return pieces, (tok.decode(ids, skip_special_tokens=True)[len(sent):] if ids else "")


def incremental_pieces(tok, ids: list[int], stop_ids: set[int]) -> tuple[list[str], str]:
    detok, pieces = IncrementalDetokenizer(tok), []
    for t in ids:
        if t in stop_ids:
            detok.hold(t)
            pieces.append("")
            break
        pieces.append(detok.push(t))
    return pieces, detok.tail()


def _pools(tok) -> dict[str, list[int]]:
    """Token ids by kind: whose bytes are not all ASCII (pieces of multi-byte characters), ASCII,
    and special (skipped when decoding)."""
    high, ascii_ = [], []
    for i in range(len(tok)):
        text = tok.decode([i])
        (high if "\ufffd" in text or any(ord(c) > 0x7F for c in text) else ascii_).append(i)
    return {"high": high, "ascii": ascii_, "special": list(tok.all_special_ids)}


def random_sequences(tok, n: int, seed: int = 0) -> list[list[int]]:
    rng, pools = random.Random(seed), _pools(tok)
    assert len(pools["high"]) > 500 and pools["special"], "the tokenizer should have multi-byte and special pieces"
    out = []
    for _ in range(n):
        mix = rng.choice([(0.9, 0.05), (0.5, 0.05), (0.2, 0.2), (0.0, 0.0)])   # P(high), P(special)
        seq = []
        for _ in range(rng.randint(1, 48)):
            x = rng.random()
            kind = "high" if x < mix[0] else "special" if x < mix[0] + mix[1] else "any"
            seq.append(rng.randrange(len(tok)) if kind == "any" else rng.choice(pools[kind]))
        out.append(seq)
    return out


def test_every_piece_and_tail_equal_the_full_decode_on_random_sequences(tok):
    sequences = random_sequences(tok, N_SEQUENCES)
    held = 0
    for ids in sequences:
        want = full_decode_pieces(tok, ids, set())
        assert incremental_pieces(tok, ids, set()) == want, ids
        held += bool(want[1])
    assert held > 20, "too few sequences ended on a held-back half character to test the tail"


def test_a_stop_token_carries_no_text_and_the_tail_includes_what_it_decodes_to(tok):
    stop = {tok.convert_tokens_to_ids("<|im_end|>"), 17}   # a special one and a plain one (17 decodes to text)
    assert tok.decode([17], skip_special_tokens=True)
    for ids in random_sequences(tok, 200, seed=1):
        ids = ids + [tok.convert_tokens_to_ids("<|im_end|>") if len(ids) % 2 else 17] + ids
        assert incremental_pieces(tok, ids, stop) == full_decode_pieces(tok, ids, stop), ids


def test_multi_byte_characters_split_over_tokens_are_held_back_then_sent_whole(tok):
    text = "naïve 日本語 🙂 ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(t) for t in ids]
    assert "".join(pieces) + detok.tail() == text and "\ufffd" not in "".join(pieces)
    assert pieces.count("") >= 2, "the emoji and the CJK characters span several byte-level tokens"
    assert (pieces, "") == full_decode_pieces(tok, ids, set())


def test_a_stop_string_leaves_the_same_text_from_either_stream(tok):
    rng = random.Random(2)
    for ids in random_sequences(tok, 150, seed=2):
        full = tok.decode(ids, skip_special_tokens=True)
        if len(full) < 4:
            continue
        at = rng.randrange(len(full) - 2)
        stop = full[at:at + rng.randint(1, 3)]
        outs = []
        for pieces, tail in (full_decode_pieces(tok, ids, set()), incremental_pieces(tok, ids, set())):
            scanner = StopScanner([stop])
            outs.append("".join(scanner.feed(p) for p in pieces) + scanner.feed(tail) + scanner.flush())
        assert outs[0] == outs[1] == full[:full.find(stop)], (ids, stop)


def test_an_undecodable_token_raises_and_is_not_kept(tok):
    detok = IncrementalDetokenizer(tok)
    first = detok.push(tok("hi", add_special_tokens=False)["input_ids"][0])
    with pytest.raises(Exception):
        detok.push(10 ** 12)   # far past any vocabulary
    assert detok.ids == tok("hi", add_special_tokens=False)["input_ids"][:1] and detok.tail() == ""
    assert first == "hi"[:len(first)]
