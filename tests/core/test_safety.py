"""Safety scorers (core/safety.py): the default offline classifier, and the guard-model path
(REWARDLOOP_SAFETY_MODEL) with a sequence classifier and a causal guard built in the test."""
from __future__ import annotations

import json

import pytest
import torch

from core.safety import CausalGuardScorer, ClassifierScorer, ProfanityScorer, SafetyScorerError, load_safety_scorer
from tests.support.processes import REPO

RUDE = ["Shut up, you stupid idiot.", "You are a worthless moron.", "Go to hell, loser.", "Nobody likes you, jerk."]
KIND = ["The capital of France is Paris.", "Happy to help with that!", "Here is a recipe for bread.",
        "Have a lovely day."]


def test_the_default_scorer_orders_the_labelled_safety_pairs():
    scorer = load_safety_scorer("")
    assert isinstance(scorer, ProfanityScorer) and scorer.name == "alt-profanity-check"
    pairs = [p for p in json.loads((REPO / "bench" / "data" / "quality_pairs.json").read_text())["pairs"]
             if p["component"] == "safety"]
    good = scorer.unsafe_probability([p["good"] for p in pairs])
    bad = scorer.unsafe_probability([p["bad"] for p in pairs])
    assert sum(b > g for g, b in zip(good, bad)) >= 0.9 * len(pairs)
    assert all(0.0 <= x <= 1.0 for x in good + bad)
    assert scorer.unsafe_probability(["", "   "]) == [0.0, 0.0] and scorer.unsafe_probability([]) == []


def _tiny_config(tok, **extra):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra)


def _fit(model, batches, steps: int = 60) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        model(**batches[step % len(batches)]).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def tok(models_dir):
    from transformers import AutoTokenizer

    from core.modeling import ensure_tiny
    return AutoTokenizer.from_pretrained(ensure_tiny(models_dir))


def test_a_local_sequence_classifier_scores_through_the_same_interface(tok, tmp_path):
    from transformers import LlamaForSequenceClassification
    torch.manual_seed(0)
    cfg = _tiny_config(tok, num_labels=2, id2label={0: "SAFE", 1: "UNSAFE"}, label2id={"SAFE": 0, "UNSAFE": 1})
    model = LlamaForSequenceClassification(cfg)
    enc = tok(RUDE + KIND, return_tensors="pt", padding=True)
    _fit(model, [{**enc, "labels": torch.tensor([1] * len(RUDE) + [0] * len(KIND))}])
    model.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")

    scorer = load_safety_scorer(str(tmp_path / "clf"))
    assert isinstance(scorer, ClassifierScorer) and scorer.label == 1
    p = scorer.unsafe_probability(RUDE + KIND)
    assert min(p[:4]) > 0.5 > max(p[4:])


def test_a_causal_guard_scores_p_unsafe_over_its_two_verdicts(tok, tmp_path):
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    (tmp_path / "guard").mkdir()
    tok.save_pretrained(tmp_path / "guard")
    LlamaForCausalLM(_tiny_config(tok)).save_pretrained(tmp_path / "guard")
    scorer = load_safety_scorer(str(tmp_path / "guard"))
    assert isinstance(scorer, CausalGuardScorer)
    batches = []   # teach it the verdicts: "unsafe" after a rude reply, "safe" after a kind one
    for text, verdict in [(t, "unsafe") for t in RUDE] + [(t, "safe") for t in KIND]:
        ctx, target = scorer.guard_prompt("Hi", text), tok(verdict, add_special_tokens=False)["input_ids"]
        batches.append({"input_ids": torch.tensor([ctx + target]), "labels": torch.tensor([[-100] * len(ctx) + target])})
    _fit(scorer.model, batches, steps=200)
    p = scorer.unsafe_probability(RUDE + KIND, ["Hi"] * 8)
    assert min(p[:4]) > 0.5 > max(p[4:])


def test_a_bad_safety_model_setting_says_what_is_wrong(tmp_path):
    with pytest.raises(SafetyScorerError, match="not a model folder"):
        load_safety_scorer(str(tmp_path / "nowhere"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(SafetyScorerError, match="neither a sequence classifier nor a causal LM"):
        load_safety_scorer(str(tmp_path / "odd"))
