"""Chat load by learner state, pure parts: the heartbeat record, the server-side counting, the
fold's increments and the figures /ops and /metrics show (no Redis)."""
from __future__ import annotations

import pytest

from core.server_load import ServerLoad, chat_busy, parse_all
from service.serving.load import ChatLoad
from worker.ops import series


def test_chat_load_counts_tokens_exact_busy_time_and_ttft_per_learner_state():
    load = ChatLoad()
    load.observe(active=0, waiting=0, training=False, now=100.0)
    load.stream_started(100.5)                                     # busy from here
    load.stream_started(101.0)
    load.token(5)
    load.first_token(0.3)
    load.observe(active=2, waiting=0, training=True, now=103.0)    # a learner run starts: 2.5 s busy idle
    load.token(3)
    load.first_token(4.0)
    load.first_token(1.5, state="idle")                            # its first token came before the run
    load.stream_ended(103.5)
    load.stream_ended(104.0)                                        # 1 s busy training
    load.observe(active=0, waiting=0, training=False, now=110.0)    # nothing in flight: not busy
    c = load.counters
    assert c["tokens_idle"] == 5 and c["tokens_training"] == 3
    assert c["busy_s_idle"] == pytest.approx(2.5) and c["busy_s_training"] == pytest.approx(1.0)
    assert c["ttft_n_idle"] == 2 and c["ttft_le_0.5_idle"] == 1 and c["ttft_le_2_idle"] == 2
    assert c["ttft_n_training"] == 1 and "ttft_le_3_training" not in c and c["ttft_le_5_training"] == 1
    load.stream_started(111.0)
    beat = ServerLoad.from_redis(load.heartbeat(111.25).to_redis())     # busy so far counts at each heartbeat
    assert beat == ServerLoad(111.25, 0, 0, False, dict(c, busy_s_idle=2.75))


def test_the_busy_signal_reads_fresh_heartbeats_only():
    fields = {"a": ServerLoad(100.0, active=0, waiting=0).to_redis(),
              "b": ServerLoad(90.0, active=3).to_redis(),          # stale: a server that died busy
              "junk": "not json"}
    assert set(parse_all(fields)) == {"a", "b"}
    assert not chat_busy(fields, now=101.0)
    fields["c"] = ServerLoad(100.5, waiting=1).to_redis()
    assert chat_busy(fields, now=101.0) and not chat_busy(fields, now=110.0)


def test_fold_increments_are_what_grew_since_the_last_fold():
    assert series.chat_increments({}, {"tokens_idle": 7.0}) == {"chat_tokens_idle|*": 7.0}
    assert series.chat_increments({"tokens_idle": 7.0, "busy_s_idle": 2.0},
                                  {"tokens_idle": 10.0, "busy_s_idle": 2.0}) == {"chat_tokens_idle|*": 3.0}


def test_histogram_quantile_interpolates_inside_the_bucket():
    hist = [(1.0, 50.0), (2.0, 90.0), (5.0, 100.0)]
    assert series.histogram_quantile(hist, 100.0, 0.5) == pytest.approx(1.0)
    assert series.histogram_quantile(hist, 100.0, 0.95) == pytest.approx(3.5)
    assert series.histogram_quantile(hist, 0.0, 0.95) is None
    assert series.histogram_quantile([(1.0, 2.0)], 4.0, 0.95) == 1.0     # beyond the last bound


def test_chat_figures_split_by_learner_state():
    counters = {"chat_tokens_idle": 400.0, "chat_busy_s_idle": 10.0, "chat_tokens_training": 100.0,
                "chat_busy_s_training": 5.0, "chat_ttft_n_training": 10.0, "chat_ttft_sum_training": 20.0,
                **{f"chat_ttft_le_{b:g}_training": (10.0 if b >= 3 else 0.0) for b in series.TTFT_BUCKETS_S}}
    fig = series.chat_figures(counters)
    assert fig["idle"]["tokens_per_s"] == 40.0 and fig["training"]["tokens_per_s"] == 20.0
    assert fig["training_vs_idle"] == 0.5 and fig["training"]["ttft_mean"] == 2.0
    assert 2.0 < fig["training"]["ttft_p95"] <= 3.0 and fig["idle"]["ttft_p95"] is None
    cols = series.series([(0, {f"{k}|*": v for k, v in counters.items()})], 60)["chat"]
    assert cols["tokens_per_s_training"] == [20.0] and cols["tokens_per_s_idle"] == [40.0]
