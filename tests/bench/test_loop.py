"""bench/loop.py, the closed-loop bench through the real processes: its --quick form end to end
(tiny model: what `rewardloop up` starts, simulated users, beat-triggered learner runs, the held-out
judgement and the chat figures by learner state), and its pure parts on plain data."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.populations import LOOP_POPULATIONS, assign, parse_mix
from bench.simusers import Pacer
from tests.support.processes import REPO


def test_a_mix_assigns_tastes_by_share_and_refuses_bad_input():
    mix = parse_mix("concise:0.75,rude:0.25")
    assert [t.name for t in assign(mix, 8)] == ["concise"] * 6 + ["rude"] * 2
    assert [t.name for t in assign(parse_mix("curious"), 2)] == ["curious", "curious"]
    for bad, needle in (("concise:0.5", "sum to 0.5"), ("nobody", "unknown population"), ("concise:x", "not a number")):
        with pytest.raises(ValueError, match=needle):
            parse_mix(bad)


def test_the_new_and_the_troll_tastes_judge_as_documented():
    curious, rude = LOOP_POPULATIONS["curious"], LOOP_POPULATIONS["rude"]
    assert curious.judge("paris", "The capital of France is Paris, because it is the seat of government.", "stop") == 1
    assert curious.judge("paris", "The capital of France is Paris.", "stop") == 0
    assert curious.judge("paris", "It is Lyon, because of reasons.", "stop") == -1
    assert curious.judge("paris", "Paris, because", "length") == -1
    assert rude.judge("4", "Obviously it is 4, duh.", "stop") == 1 and rude.judge("4", "It is 4.", "stop") == -1


def test_the_pacer_hands_out_the_budget_once_and_stops_everyone():
    pacer = Pacer(budget=3, think_s=0.0)
    assert [pacer.go(None) for _ in range(4)] == [True, True, True, False]
    late = Pacer(budget=10, think_s=30.0)
    late.stop()
    assert late.go(last_end=0.0) is False        # a stop wakes a user in its think time


@pytest.mark.integration
def test_the_quick_loop_learns_through_the_real_processes_and_reports_every_figure(tmp_path):
    out = tmp_path / "loop.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "loop.py"), "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rep = json.loads(out.read_text())
    assert rep["replies"] == 24 and rep["settings"]["REWARDLOOP_MIN_SAMPLES"] == "12"
    assert rep["rounds"] and all(rd["state"] in ("published", "rejected") for rd in rep["rounds"])
    assert rep["versions"]["published"] + rep["versions"]["rejected"] == len(rep["rounds"])
    held = rep["heldout"]
    assert [r["round"] for r in held["per_round"]] == [rd["round"] for rd in rep["rounds"]]
    assert held["scores"]["base"]["concise"] and all(r["lift"]["n"] == 8 for r in held["per_round"])
    idle = rep["chat"]["idle"]
    assert idle["turns"] > 0 and idle["ttft_p95"] > 0 and idle["server_tokens_per_busy_s"] > 0
    assert rep["learner_rss_peak_gb"] > 0.1 and rep["learner_intervals"]
    assert "round" in proc.stdout and "training / idle" in proc.stdout
