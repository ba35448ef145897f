"""Tools through a model's own chat template and tool parser: the embedded weights under a
Qwen-style template (mlx-lm infers its ``json_tools`` parser) and a Mistral-style one (its
``mistral`` parser, whose calls are not JSON objects, so a grammar cannot force them)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abstractcore import Message, tool
from abstractcore.errors import UnsupportedFeatureError

pytestmark = pytest.mark.mlx

_QWEN_STYLE = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}{% else %}You are helpful.{% endif %}

Available functions:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Call one as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}{% if message.role != 'system' %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{{ message.content }}{% for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{% set tool_call = tool_call.function %}{% endif -%}
<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}{% endif %}{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

_MISTRAL_STYLE = """{% for message in messages %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS] \
Answer with [TOOL_CALLS]name[ARGS]{...} to call one.{% endif %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@tool
def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city's name
    """
    return f"sunny in {city}"


def _with_template(src: Path, dst: Path, template: str) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "tokenizer_config.json":
            (dst / f.name).symlink_to(f)
    config = json.loads((src / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return dst


@pytest.fixture(scope="module")
def templated(embedded_model_dir: Path, tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
    from abstractcore.providers.mlx.provider import MLXProvider

    root = tmp_path_factory.mktemp("templates")
    llms = {
        name: MLXProvider(str(_with_template(embedded_model_dir, root / name, template)))
        for name, template in (("qwen", _QWEN_STYLE), ("mistral", _MISTRAL_STYLE))
    }
    yield llms
    for llm in llms.values():
        llm.close()
    shutil.rmtree(root, ignore_errors=True)


def _prompt(llm: Any, messages: list[Any]) -> str:
    from abstractcore.providers.mlx.tool_format import render_messages

    request = llm.build_request(messages=messages, tools=[get_weather])
    msgs, extra = render_messages(request.messages, request.tools, llm._jobs.tool_format)
    return str(llm.engine.tokenizer.apply_chat_template(msgs, tokenize=False, **extra))


def test_a_template_with_tools_renders_them_and_its_parser_reads_the_calls(
    templated: dict[str, Any],
) -> None:
    llm = templated["qwen"]
    fmt = llm._jobs.tool_format
    assert fmt.native and fmt.json_calls and fmt.start == "<tool_call>"
    first = llm.generate("Weather in Oslo?", tools=[get_weather], tool_choice="required",
                         max_output_tokens=40)  # fmt: skip
    assert first.finish_reason == "tool_calls" and "<tool_call>" not in first.content
    (call,) = first.tool_calls
    assert call.name == "get_weather" and isinstance(call.arguments["city"], str)
    messages = [
        Message(role="user", content="Weather in Oslo?"),
        first.message(),
        Message(role="tool", tool_call_id=call.id, content=get_weather(**call.arguments)),
    ]
    prompt = _prompt(llm, messages)
    assert "Available functions:" in prompt and '"name": "get_weather"' in prompt
    assert "You may call one or more functions" not in prompt  # not the fallback rendering
    assert "<tool_response>\nsunny in" in prompt and prompt.count("<tool_call>") == 2
    final = llm.generate(messages=messages, tools=[get_weather], max_output_tokens=16)
    assert final.finish_reason in ("stop", "length", "tool_calls")


def test_a_tool_format_that_is_not_json_parses_but_cannot_be_forced(
    templated: dict[str, Any],
) -> None:
    from abstractcore.providers.mlx.tool_format import ToolCallParser

    llm = templated["mistral"]
    fmt = llm._jobs.tool_format
    assert fmt.native and not fmt.json_calls and fmt.start == "[TOOL_CALLS]" and fmt.end is None
    with pytest.raises(UnsupportedFeatureError) as info:
        llm.generate("Weather?", tools=[get_weather], tool_choice="required")
    assert info.value.field == "tool_choice"
    parser = ToolCallParser(fmt, [get_weather])
    content, deltas = parser.feed('Checking. [TOOL_CALLS]get_weather[ARGS]{"city": ')
    assert content == "Checking. " and deltas == []
    rest, deltas = parser.feed('"Rome"}')
    assert rest == "" and deltas == []
    tail, deltas = parser.finish()  # no end marker: the call runs to the end of the answer
    assert tail == "" and [(d.name, json.loads(d.arguments)) for d in deltas] == [
        ("get_weather", {"city": "Rome"})
    ]
    assert "[AVAILABLE_TOOLS]" in _prompt(llm, [Message(role="user", content="Weather?")])
    r = llm.generate("Weather in Rome?", tools=[get_weather], max_output_tokens=24)
    assert "[TOOL_CALLS]" not in r.content
