"""Prompt building within the context budget: oldest turns go first; system and newest stay."""

from service.serving.prompting import Prompt, build_prompt, fit_messages


def words(messages: list[dict]) -> int:
    """A fake tokenizer: one token per word."""
    return sum(len(m["content"].split()) for m in messages)


SYSTEM = "be brief"                       # 2 words
TURNS = [("one two", "three four"),       # 4 words per turn
         ("five six", "seven eight"),
         ("nine ten", "eleven twelve")]
NEW = "what now"                          # 2 words
FULL = 2 + 3 * 4 + 2                      # 16


def contents(prompt: Prompt) -> list[str]:
    return [m["content"] for m in prompt.messages]


def test_everything_fits():
    p = build_prompt(SYSTEM, TURNS, NEW, words, budget=FULL)
    assert p.dropped_turns == 0 and not p.truncated
    assert p.n_tokens == FULL
    assert [m["role"] for m in p.messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert contents(p)[0] == SYSTEM and contents(p)[-1] == NEW


def test_drops_oldest_turn_first():
    p = build_prompt(SYSTEM, TURNS, NEW, words, budget=FULL - 1)
    assert p.dropped_turns == 1 and p.truncated
    assert p.n_tokens == FULL - 4
    assert contents(p) == [SYSTEM, "five six", "seven eight", "nine ten", "eleven twelve", NEW]


def test_drops_as_many_turns_as_needed():
    p = build_prompt(SYSTEM, TURNS, NEW, words, budget=8)
    assert p.dropped_turns == 2
    assert contents(p) == [SYSTEM, "nine ten", "eleven twelve", NEW]
    assert p.n_tokens == 8


def test_only_system_and_new_message_when_tight():
    p = build_prompt(SYSTEM, TURNS, NEW, words, budget=4)
    assert p.dropped_turns == 3 and p.truncated
    assert contents(p) == [SYSTEM, NEW] and p.n_tokens == 4


def test_returned_as_is_when_even_system_and_message_do_not_fit():
    p = build_prompt(SYSTEM, TURNS, NEW, words, budget=3)
    assert contents(p) == [SYSTEM, NEW]
    assert p.n_tokens == 4 > 3  # the caller sees it is over budget and refuses
    assert p.dropped_turns == 3


def test_no_system_message_when_empty():
    p = build_prompt("", TURNS[:1], NEW, words, budget=100)
    assert [m["role"] for m in p.messages] == ["user", "assistant", "user"]
    assert p.n_tokens == 6


def test_no_history():
    p = build_prompt(SYSTEM, [], NEW, words, budget=100)
    assert contents(p) == [SYSTEM, NEW] and p.dropped_turns == 0


# --- OpenAI-style message lists ------------------------------------------------------------
MSGS = [
    {"role": "system", "content": "be brief"},     # 2
    {"role": "user", "content": "a b c"},          # 3
    {"role": "assistant", "content": "d e f"},     # 3
    {"role": "user", "content": "g h"},            # 2
]


def test_fit_messages_all_fit():
    p = fit_messages(MSGS, words, budget=10)
    assert p.messages == MSGS and p.dropped_turns == 0 and p.n_tokens == 10


def test_fit_messages_drops_oldest_non_system():
    p = fit_messages(MSGS, words, budget=7)
    assert contents(p) == ["be brief", "d e f", "g h"]
    assert p.dropped_turns == 1 and p.truncated and p.n_tokens == 7


def test_fit_messages_keeps_system_and_last_message_even_over_budget():
    p = fit_messages(MSGS, words, budget=1)
    assert contents(p) == ["be brief", "g h"]
    assert p.dropped_turns == 2
    assert p.n_tokens == 4


def test_fit_messages_keeps_every_system_message():
    msgs = [{"role": "system", "content": "s1"}, {"role": "user", "content": "old old old"},
            {"role": "system", "content": "s2"}, {"role": "user", "content": "new"}]
    p = fit_messages(msgs, words, budget=3)
    assert contents(p) == ["s1", "s2", "new"] and p.dropped_turns == 1


def test_fit_messages_single_message():
    p = fit_messages([{"role": "user", "content": "x y z"}], words, budget=1)
    assert contents(p) == ["x y z"] and p.dropped_turns == 0 and p.n_tokens == 3
