"""The local engine's scheduling rules on plain data: no model, no thread (service/engine/scheduler.py).
The engine tests (test_batching, test_admission, test_prefix_cache...) check that the engine
runs these plans; here each rule is checked alone."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.engine.events import FinishReason
from service.engine.scheduler import (
    admits,
    finish_after,
    forward_weights,
    keeps_prefix,
    line_places,
    plan_round,
    prefill_end,
    retry_after,
    tell_place,
)


@dataclass(eq=False)
class Seq:
    name: str
    decoding: bool = False     # its prompt is in
    cancelled: bool = False
    waiting: bool = True
    position: int = 0

    def __repr__(self) -> str:
        return self.name


def names(seqs) -> list[str]:
    return [s.name for s in seqs]


def test_an_idle_engine_plans_nothing():
    plan = plan_round([])
    assert (plan.cancel, plan.prefill, plan.rows) == ([], None, [])


def test_every_decoding_sequence_samples_once_per_round_in_line_order():
    seqs = [Seq("a", decoding=True, waiting=False), Seq("b", decoding=True, waiting=False),
            Seq("c", decoding=True, waiting=False)]
    plan = plan_round(seqs)
    assert names(plan.rows) == ["a", "b", "c"] and plan.prefill is None and plan.cancel == []


def test_only_the_oldest_prompt_not_yet_in_gets_a_prefill_chunk():
    """First come, first served: eight prompts arriving together see their first tokens one
    after another, not all at the end."""
    seqs = [Seq("old", decoding=True, waiting=False), Seq("p1"), Seq("p2"), Seq("p3")]
    plan = plan_round(seqs)
    assert plan.prefill is seqs[1]
    assert names(plan.rows) == ["old", "p1"], "later prompts wait for the ones before them"


def test_the_prefilled_sequence_keeps_its_place_among_the_rows():
    seqs = [Seq("a", decoding=True, waiting=False), Seq("p"), Seq("b", decoding=True, waiting=False)]
    assert names(plan_round(seqs).rows) == ["a", "p", "b"]


def test_cancelled_sequences_end_first_and_neither_sample_nor_prefill():
    seqs = [Seq("gone", cancelled=True), Seq("a", decoding=True, waiting=False),
            Seq("left", decoding=True, waiting=False, cancelled=True), Seq("p")]
    plan = plan_round(seqs)
    assert names(plan.cancel) == ["gone", "left"]
    assert plan.prefill is seqs[3] and names(plan.rows) == ["a", "p"]


@pytest.mark.parametrize("start, total, chunk, end", [
    (0, 155, 128, 155),     # 27 <= 32 would be left: one pass
    (0, 161, 128, 128),     # 33 left: its own pass
    (128, 161, 128, 161),
    (0, 100, 128, 100),
    (0, 11, 3, 3), (9, 11, 3, 11),   # chunk 3: nothing rides along (3 // 4 = 0)
])
def test_a_prefill_chunk_takes_the_rest_when_at_most_a_quarter_chunk_would_be_left(start, total, chunk, end):
    assert prefill_end(start, total, chunk) == end


def test_a_long_prompt_goes_in_full_chunks():
    starts, end = [], 0
    while end < 1000:
        starts.append(end)
        end = prefill_end(end, 1000, 128)
    assert end == 1000 and len(starts) == 8 and all(b - a == 128 for a, b in zip(starts, starts[1:]))


def test_waiting_clients_are_told_a_changed_place_but_never_place_zero():
    line = [Seq("running", decoding=True, waiting=False), Seq("p0", position=0), Seq("p1", position=2),
            Seq("p2", position=2)]
    places = line_places(line)
    assert [(s.name, p) for s, p in places] == [("p0", 0), ("p1", 1), ("p2", 2)]
    told = [s.name for s, p in places if tell_place(s.position, p)]
    assert told == ["p1"], "place 0 is being prefilled (its first token follows) and p2's place did not change"


@pytest.mark.parametrize("token, n, max_new, reason", [
    (2, 3, 10, FinishReason.STOP),
    (2, 10, 10, FinishReason.STOP),      # a stop token at the limit is still a stop
    (7, 10, 10, FinishReason.LENGTH),
    (7, 11, 10, FinishReason.LENGTH),
    (7, 3, 10, None),
])
def test_a_reply_ends_on_a_stop_token_or_at_its_length(token, n, max_new, reason):
    assert finish_after(token, n, {2, 3}, max_new) is reason


def test_every_end_but_an_error_keeps_the_sessions_prefix():
    assert [r for r in FinishReason if keeps_prefix(r)] == [FinishReason.STOP, FinishReason.LENGTH,
                                                            FinishReason.CANCELLED]


def test_admission_refuses_once_max_queue_requests_wait():
    assert admits(0, None) and admits(10 ** 6, None)
    assert admits(1, 2) and not admits(2, 2) and not admits(3, 2)
    assert not admits(0, 0)


def test_retry_after_is_the_line_at_the_mean_prefill_time_between_1_and_60_s():
    assert retry_after(0, 0.5) == 1
    assert retry_after(10, 0.5) == 6               # round(5.5)
    assert retry_after(10, 0.5, servers=2) == 3    # two servers work the line in parallel
    assert retry_after(10 ** 4, 0.5) == 60


def test_one_version_per_forward_is_activated_and_several_are_a_mixed_batch():
    for rows in ([None, "", "base"], [None]):
        w = forward_weights(rows)
        assert not w.mixed and w.version is None, "every spelling of the base model is one version"
    w = forward_weights(["3", "3"])
    assert not w.mixed and w.version == "3"
    w = forward_weights(["3", None, "4"])
    assert w.mixed and w.versions == {"3", "4"}
    assert forward_weights(["base", "3"]).mixed
