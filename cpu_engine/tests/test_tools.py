"""The forced-call rules of ``cpu_engine.tools``: which tool, and arguments valid for its schema."""

from __future__ import annotations

import json

import pytest

from cpu_engine.errors import InputError
from cpu_engine.tools import (
    Tool,
    anthropic_tools,
    call,
    example_value,
    forced_anthropic_tool,
    forced_tool,
    openai_tools,
)

TOOLS = [Tool(name="a", parameters={}), Tool(name="b", parameters={})]


def test_the_choice_picks_the_named_tool_the_first_when_required_and_none_for_none():
    assert forced_tool(TOOLS, {"type": "function", "function": {"name": "b"}}).name == "b"
    assert forced_tool(TOOLS, {"type": "function", "name": "b"}).name == "b"  # the Responses shape
    assert forced_tool(TOOLS, "required").name == "a"
    assert forced_tool(TOOLS, "none") is None
    assert forced_tool([], None) is None


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_is_refused_with_the_choices_that_work(choice):
    with pytest.raises(InputError, match='"required"') as caught:
        forced_tool(TOOLS, choice)
    assert caught.value.param == "tool_choice"


def test_a_choice_that_names_no_tool_is_refused():
    with pytest.raises(InputError, match="not among the tools"):
        forced_tool(TOOLS, {"type": "function", "function": {"name": "c"}})
    with pytest.raises(InputError, match="needs tools"):
        forced_tool([], "required")


def test_anthropic_choices():
    assert forced_anthropic_tool(TOOLS, {"type": "tool", "name": "b"}).name == "b"
    assert forced_anthropic_tool(TOOLS, {"type": "any"}).name == "a"
    assert forced_anthropic_tool(TOOLS, {"type": "none"}) is None
    with pytest.raises(InputError, match="auto"):
        forced_anthropic_tool(TOOLS, None)


def test_tool_shapes_are_read_and_non_function_tools_refused():
    chat = openai_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert chat == [Tool(name="f", parameters={"type": "object"})]
    flat = openai_tools([{"type": "function", "name": "f"}], flat=True)
    assert flat[0].parameters == {"type": "object", "properties": {}}
    assert anthropic_tools([{"name": "g", "input_schema": {"type": "object"}}])[0].name == "g"
    with pytest.raises(InputError, match="only function tools"):
        openai_tools([{"type": "web_search"}], flat=True)
    with pytest.raises(InputError, match="unique"):
        openai_tools([{"type": "function", "name": "f"}] * 2, flat=True)


def test_arguments_hold_exactly_the_required_keys_with_valid_values():
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 2},
            "unit": {"enum": ["c", "f"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "ratio": {"type": "number", "exclusiveMinimum": 0.5},
            "cold": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
            "kind": {"anyOf": [{"const": "x"}, {"type": "string"}]},
            "maybe": {"type": ["null", "integer"], "maximum": -3},
            "level": {"type": "string", "default": "high"},
            "optional": {"type": "string"},
        },
        "required": ["city", "unit", "days", "ratio", "cold", "tags", "where", "kind", "maybe", "level"],
    }
    value = example_value(schema)
    assert value == {
        "city": "xx",
        "unit": "c",
        "days": 1,
        "ratio": 1.5,
        "cold": False,
        "tags": ["", ""],
        "where": {"lat": 0},
        "kind": "x",
        "maybe": -3,
        "level": "high",
    }
    made = call(Tool(name="w", parameters=schema))
    assert made.id.startswith("chatcmpl-tool-")
    assert json.loads(made.arguments) == value
    assert call(Tool(name="w", parameters=schema)).arguments == made.arguments  # deterministic
