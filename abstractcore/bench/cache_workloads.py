"""Prompt-cache workloads: a growing multi-turn conversation and a long shared system prompt.

Both are built from the benchmark's prompt set, deterministically, so every system gets the
same token sequences. ``multiturn``: conversations of 8 turns whose history reaches ~1,500
tokens on SmolLM2 (canned ~200-token assistant replies keep the history identical across
systems), each conversation under its own ``prompt_cache_key``. ``shared-prefix``: every query
starts with the same ~1,000-token system prompt (a rule book, as agents send tool schemas).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .prompts import Prompt, Query, select_prompts

__all__ = [
    "TURNS",
    "build_multiturn",
    "build_shared_prefix",
    "conversation_turns",
    "shared_system_prompt",
]

#: Turns per conversation in the ``multiturn`` workload.
TURNS = 8

_RULES = [
    "Answer the question that was asked, and say so plainly when you do not know the answer.",
    "Prefer short sentences, concrete numbers and named examples over general statements.",
    "When a request is ambiguous, state the reading you chose before you answer it.",
    "Never invent citations, file names, prices, dates or people that you cannot verify.",
    "Use metric units first and give imperial units in brackets when they help the reader.",
    "Format lists with one item per line and keep every item shorter than twenty words.",
    "When you write code, name the language, keep it runnable and explain what it prints.",
    "Keep personal data out of examples; use placeholder names such as Alex or Sam instead.",
    "Refuse requests that could hurt someone and suggest a safer way to reach the same goal.",
    "When the user corrects you, thank them briefly, fix the answer and move on without fuss.",
    "Do not repeat the question back to the user; start with the most useful sentence.",
    "Round numbers sensibly: two significant figures are enough for most everyday answers.",
    "If a calculation is involved, show the main step so the reader can check the result.",
    "Mention the main trade-off when you recommend one option over another one.",
    "Say which assumptions matter most when an answer depends on local laws or prices.",
    "Keep a friendly, calm tone, even when the user is frustrated or writes in capitals.",
    "Translate technical terms into everyday words the first time you use each of them.",
    "End with a follow-up suggestion only when it is likely to help the user's next step.",
    "Do not claim to browse the web, run code or remember earlier conversations.",
    "When summarising a text, keep its order and do not add opinions that are not in it.",
]

_REPLY_SENTENCES = [
    "That is a good question, and the short answer depends on a few things worth unpacking.",
    "First, it helps to separate what is well established from what is still debated.",
    "Most of the evidence points in one direction, although the size of the effect varies.",
    "A practical way to think about it is to compare the costs and the benefits over time.",
    "For example, small changes repeated every day often matter more than one big change.",
    "Second, the context matters: the same choice can be right in one place and wrong elsewhere.",
    "People who study the topic usually recommend starting with the simplest option first.",
    "If that does not work, you can try the next option and measure the difference carefully.",
    "It is also worth checking the assumptions, because a wrong premise leads to a wrong plan.",
    "Finally, keep notes of what you tried, so you can see which steps actually helped.",
]


def shared_system_prompt() -> str:
    """The ~1,000-token system prompt every ``shared-prefix`` query starts with."""
    lines = ["You are the support assistant of a large online library. Follow these rules."]
    for i in range(43):
        lines.append(f"Rule {i + 1}: {_RULES[i % len(_RULES)]}")
    return "\n".join(lines)


def _reply(turn: int) -> str:
    """A canned ~200-token assistant reply for ``turn`` (different for every turn)."""
    n = len(_REPLY_SENTENCES)
    picked = [_REPLY_SENTENCES[(turn * 3 + i) % n] for i in range(10)]
    return f"Here is my answer to your question number {turn + 1}. " + " ".join(picked)


def conversation_turns(questions: Sequence[str]) -> list[list[dict[str, str]]]:
    """The message lists of each turn: turn k holds k questions and the k-1 replies between."""
    turns: list[list[dict[str, str]]] = []
    history: list[dict[str, str]] = []
    for k, question in enumerate(questions):
        history = [*history, {"role": "user", "content": question}]
        turns.append(list(history))
        history = [*history, {"role": "assistant", "content": _reply(k)}]
    return turns


def build_multiturn(prompts: Sequence[Prompt], n: int) -> list[Query]:
    """``n`` queries: ceil(n / 8) conversations of 8 turns, turn-major, one key each."""
    convs = max(1, -(-n // TURNS))
    picked = select_prompts(prompts, convs * TURNS)
    plans: list[tuple[str, list[list[dict[str, str]]]]] = []
    for c in range(convs):
        own = picked[c * TURNS : (c + 1) * TURNS]
        plans.append((own[0].id, conversation_turns([p.text for p in own])))
    queries: list[Query] = []
    for turn in range(TURNS):
        for conv_id, turns in plans:
            options: dict[str, Any] = {"prompt_cache_key": f"multiturn-{conv_id}"}
            queries.append(Query(f"{conv_id}-t{turn + 1}", turns[turn], options))
    return queries[:n]


def build_shared_prefix(prompts: Sequence[Prompt], n: int) -> list[Query]:
    """``n`` distinct questions behind the same ~1,000-token system prompt, no keys."""
    system = shared_system_prompt()
    return [
        Query(
            p.id,
            [{"role": "system", "content": system}, {"role": "user", "content": p.text}],
        )
        for p in select_prompts(prompts, n)
    ]
