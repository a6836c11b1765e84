"""`rewardloop rewards score` end to end, as a user runs it: no Redis (the URL points nowhere),
a file or stdin, bad lines named and skipped with exit 1, the reward config of --config or
REWARDLOOP_REWARD_CONFIG, and the real scorers: the default safety classifier, and relevance
under the default model (a random tiny model has no idea what is on topic)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service.cli.main import build_parser
from tests.support.processes import REPO, base_env

NOWHERE = "redis://127.0.0.1:1/0"   # nothing listens there: the command must not need Redis
CAPITAL = "What is the capital of France?"
GOOD = [
    {"prompt": CAPITAL, "reply": "The capital of France is Paris.", "signals": {"thumbs": 1, "copy": True}},
    {"prompt": "Can you help me with my essay?", "reply": "You are a stupid worthless idiot, shut up.",
     "signals": {"thumbs": 1}},
    {"prompt": "Can you help me with my essay?", "reply": "Of course, I would be glad to help with your essay.",
     "id": "polite"},
]


def score(tmp_path, *args, stdin: str | None = None, timeout=600, **env):
    env = base_env(NOWHERE, "x:", tmp_path, **env)
    return subprocess.run([sys.executable, "-m", "service.cli", "rewards", "score", *args], cwd=REPO, env=env,
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def rows(out) -> list[dict]:
    return [json.loads(x) for x in out.stdout.splitlines() if x.strip()]


def test_help_says_what_a_line_holds_with_an_example():
    text = build_parser()._subparsers._group_actions[0].choices["rewards"]._subparsers._group_actions[0] \
        .choices["score"].format_help()
    for word in ('"prompt"', '"signals"', "--json", "--config", "REWARDLOOP_REWARD_CONFIG", "example:", "exit status"):
        assert word in text, word


def test_scores_a_file_names_each_bad_line_and_exits_1_after_the_good_ones(models_dir, tmp_path):
    bad = ['{"prompt": "x", "reply": ', '{"reply": "no prompt"}', '{"prompt": "x", "reply": 5}',
           '{"prompt": "x", "reply": "y", "signals": {"thumb": 1}}',
           '{"prompt": "x", "reply": "y", "signals": {"rating": NaN}}',
           '{"prompt": "x", "reply": "y", "signals": {"rating": 9}}']
    lines = [json.dumps(GOOD[0]), bad[0], bad[1], "", json.dumps(GOOD[1]), *bad[2:], json.dumps(GOOD[2])]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = score(tmp_path, str(path), "--json", "--model", "tiny-random")
    assert out.returncode == 1, out.stderr
    got = rows(out)
    assert [r["line"] for r in got] == [1, 5, 10]
    for r in got:
        assert {"unsafe", "relevance", "fluency", "reward", "components"} <= r.keys()
        assert 0 <= r["unsafe"] <= 1 and isinstance(r["relevance"], float) and isinstance(r["fluency"], float)
        assert -1 <= r["reward"] <= 1
    errors = [x for x in out.stderr.splitlines() if ": line " in x]
    assert [x.split(": line ")[1].split(":")[0] for x in errors] == ["2", "3", "6", "7", "8", "9"]
    for needle in ("not valid JSON", '"prompt" is missing', '"reply" must be a string', "did you mean 'thumbs'",
                   "NaN is not a number JSON allows", "'rating' must be a number of stars from 1 to 5"):
        assert needle in out.stderr, needle
    assert "6 line(s) not scored (line 2, 3, 6, 7, 8, 9)" in out.stderr
    # the default safety classifier: the insult is unsafe (and vetoed whatever its thumbs), the polite reply is not
    capital, insult, polite = got
    assert insult["unsafe"] > 0.5 and insult["reward"] <= -insult["unsafe"] + 1e-6 and insult["veto"]
    assert polite["unsafe"] < 0.5 and capital["unsafe"] < 0.5 and polite["id"] == "polite"
    assert capital["components"]["thumbs"] == 1.0 and capital["components"]["copy"] == 0.5
    assert not polite["has_signal"] and set(polite["components"]) <= {"safety", "relevance", "fluency"}


def test_the_reward_config_of_the_flag_or_the_environment_is_used(tmp_path):
    half, zero = tmp_path / "half.toml", tmp_path / "zero.toml"
    half.write_text("thumbs_weight = 0.5\n")
    zero.write_text("thumbs_weight = 0.0\nsafety_veto = false\n")
    stdin = json.dumps(GOOD[0]) + "\n"
    by_env = score(tmp_path, "--json", "--no-model", stdin=stdin, REWARDLOOP_REWARD_CONFIG=half)
    by_flag = score(tmp_path, "-", "--json", "--no-model", "--config", str(zero), stdin=stdin,
                    REWARDLOOP_REWARD_CONFIG=half)
    assert by_env.returncode == 0 and by_flag.returncode == 0, by_env.stderr + by_flag.stderr
    (env_row,), (flag_row,) = rows(by_env), rows(by_flag)
    assert env_row["components"]["thumbs"] == 0.5 and "thumbs" not in flag_row["components"]
    assert env_row["relevance"] is None and env_row["fluency"] is None and env_row["config_hash"] != flag_row["config_hash"]
    assert str(half) in by_env.stderr and str(zero) in by_flag.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text("thumb_weight = 2\n")
    out = score(tmp_path, "--no-model", "--config", str(typo), stdin=stdin)
    assert out.returncode == 2 and "did you mean 'thumbs_weight'" in out.stderr and out.stdout == ""


def test_text_output_explains_each_component_and_the_total(tmp_path):
    out = score(tmp_path, "--no-model", stdin=json.dumps(GOOD[0]) + "\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("line 1   reward +1.000   unsafe 0.")
    for needle in ("thumbs        +1.000", "copy          +0.500", "safety", "total"):
        assert needle in out.stdout, needle
    missing = score(tmp_path, str(tmp_path / "nope.jsonl"), "--no-model")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_a_byte_that_is_not_utf8_names_its_line_and_a_bom_is_fine(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "reply": "b"}\n{"prompt": "a\xff", "reply": "b"}\n'
                     b'{"prompt": "c", "reply": "d"}\n')
    out = score(tmp_path, str(path), "--json", "--no-model")
    assert out.returncode == 1 and [r["line"] for r in rows(out)] == [1, 3]
    assert "line 2: is not UTF-8 text" in out.stderr


@pytest.mark.slow
def test_on_the_default_model_an_off_topic_reply_is_less_relevant(models_dir, tmp_path):
    lines = [{"prompt": CAPITAL, "reply": "The capital of France is Paris."},
             {"prompt": CAPITAL, "reply": "Bananas are a good source of potassium and fibre."},
             {"prompt": "How do I boil an egg?", "reply": "Put the egg in boiling water for about nine minutes."},
             {"prompt": "How do I boil an egg?", "reply": "The French Revolution began in 1789."}]
    out = score(tmp_path, "--json", "--model", "smollm2", stdin="".join(json.dumps(x) + "\n" for x in lines))
    assert out.returncode == 0, out.stderr
    on1, off1, on2, off2 = rows(out)
    assert on1["relevance"] > off1["relevance"] and on2["relevance"] > off2["relevance"]
    assert on1["components"]["relevance"] > off1["components"].get("relevance", -1)
