"""Function tools on the CPU engine: forced calls with arguments built from the tool's schema.

vLLM answers a forced tool choice (a named function, or ``"required"``) by constraining decoding
to the tool's JSON schema, and an ``"auto"`` choice by parsing the model's own call syntax
(``--tool-call-parser``). The CPU engine has neither: its models (the tiny one above all) cannot be
trusted to write a call, and transformers' batching loop cannot constrain decoding to a schema.
Silently ignoring ``tools`` would be worse than either, so the rules are:

* ``tool_choice`` a named function, or ``"required"`` (the first tool is called): the reply is a
  call of that function whose arguments are built from its ``parameters`` schema, deterministically
  and always valid against it: every *required* property gets ``const``, else the first ``enum``
  value, else ``default``, else the first of ``examples``, else the plain value of its type (``""``
  padded to ``minLength``, ``0`` moved into ``minimum``, ``false``, ``[]`` padded to ``minItems``,
  an object with its own required properties). The model is not run; ``completion_tokens`` counts
  the tokens of the arguments text, as if the model had written it. finish_reason is
  ``"tool_calls"``.
* ``tool_choice`` ``"none"``: the model answers in text; the tools still reach a chat template that
  renders them, as in vLLM.
* ``tool_choice`` ``"auto"`` (OpenAI's default when tools are given): a 400 that says which choices
  work, because the engine cannot decide whether to call a tool.

The conversation may carry earlier calls (assistant ``tool_calls``) and their results (``tool``
messages); ``cpu_engine.backends`` renders them for templates without tool support.

The Responses API (flat ``{"type": "function", "name", "parameters"}`` tools) and Anthropic's
Messages API (``{"name", "input_schema"}`` tools, ``tool_choice`` ``{"type": "tool"|"any"|...}``)
convert their shapes to ``Tool`` and their choice to these same three cases.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from cpu_engine.errors import InputError

AUTO_REFUSED = (
    'tool_choice "auto" is not supported by the CPU engine: its models cannot decide when to call a '
    'tool. Set tool_choice to a named function or "required" (the engine returns a call whose '
    'arguments follow the tool\'s schema), or to "none".'
)
MAX_DEPTH = 8


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any]
    description: str = ""

    def openai(self) -> dict[str, Any]:
        """The chat-completions shape, which chat templates read."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def _tool(name: Any, parameters: Any, description: Any, param: str) -> Tool:
    if not isinstance(name, str) or not name:
        raise InputError("every tool needs a non-empty string name", param)
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise InputError(f"the parameters of tool {name!r} must be a JSON schema object", param)
    return Tool(
        name=name, parameters=parameters, description=description if isinstance(description, str) else ""
    )


def openai_tools(tools: Any, *, flat: bool = False, param: str = "tools") -> list[Tool]:
    """Chat completions' ``{"type": "function", "function": {...}}`` tools, or (``flat``) the
    Responses API's ``{"type": "function", "name", "parameters"}``."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InputError("tools must be a list", param)
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise InputError(f"only function tools are supported by the CPU engine (got {kind!r})", param)
        spec = tool if flat else tool.get("function")
        if not isinstance(spec, dict):
            raise InputError("a function tool needs a 'function' object", param)
        out.append(_tool(spec.get("name"), spec.get("parameters"), spec.get("description"), param))
    _unique(out, param)
    return out


def anthropic_tools(tools: Any) -> list[Tool]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InputError("tools: must be a list", "tools")
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise InputError("tools: every tool must be an object", "tools")
        if tool.get("type") not in (None, "custom"):
            raise InputError(
                f"tools: server tools ({tool.get('type')!r}) are not supported by the CPU engine", "tools"
            )
        out.append(_tool(tool.get("name"), tool.get("input_schema"), tool.get("description"), "tools"))
    _unique(out, "tools")
    return out


def _unique(tools: list[Tool], param: str) -> None:
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InputError("tool names must be unique", param)


def _named(tools: list[Tool], name: Any, param: str) -> Tool:
    for tool in tools:
        if tool.name == name:
            return tool
    raise InputError(f"tool_choice names {name!r}, which is not among the tools", param)


def forced_tool(tools: list[Tool], choice: Any, *, param: str = "tool_choice") -> Tool | None:
    """The tool to call, or None to answer in text; refuses ``"auto"`` (see the module doc).

    ``choice`` is chat completions' or the Responses API's: ``"none"``, ``"auto"``,
    ``"required"``, ``{"type": "function", "function": {"name"}}`` or ``{"type": "function",
    "name"}``."""
    if choice is None:
        choice = "auto" if tools else "none"
    if choice == "none":
        return None
    if not tools:
        raise InputError("tool_choice needs tools", param)
    if choice == "auto":
        raise InputError(AUTO_REFUSED, param)
    if choice == "required":
        return tools[0]
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        return _named(tools, name, param)
    raise InputError('tool_choice must be "none", "auto", "required" or a named function', param)


def forced_anthropic_tool(tools: list[Tool], choice: Any) -> Tool | None:
    """Anthropic's ``tool_choice``: ``{"type": "auto"|"any"|"tool"|"none"}``."""
    kind = choice.get("type") if isinstance(choice, dict) else None
    if choice is None:
        kind = "auto" if tools else "none"
    if kind == "none":
        return None
    if kind == "auto":
        raise InputError(
            'tool_choice {"type": "auto"} is not supported by the CPU engine: its models cannot decide '
            'when to call a tool. Use {"type": "tool", "name": ...}, {"type": "any"} (the first tool '
            'is called, with input that follows its input_schema), or {"type": "none"}.',
            "tool_choice",
        )
    if not tools:
        raise InputError("tool_choice needs tools", "tool_choice")
    if kind == "any":
        return tools[0]
    if kind == "tool":
        return _named(tools, choice.get("name"), "tool_choice")
    raise InputError('tool_choice.type must be "auto", "any", "tool" or "none"', "tool_choice")


# -- arguments -------------------------------------------------------------------------------------


def example_value(schema: Any, depth: int = 0) -> Any:
    """A value valid against ``schema``, the same every time (see the module doc)."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    for key in ("const",):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return example_value(options[0], depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged.update(part)
        return example_value(merged, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = required if isinstance(required, list) else []
        return {name: example_value(properties.get(name, {}), depth + 1) for name in required}
    if kind == "array":
        count = schema.get("minItems")
        count = count if isinstance(count, int) else 0
        return [example_value(schema.get("items", {}), depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value: int | float = 0
        if isinstance(low, int | float) and not isinstance(low, bool):
            value = low + 1 if "minimum" not in schema else low
        high = schema.get("maximum")
        if isinstance(high, int | float) and not isinstance(high, bool) and value > high:
            value = high
        if kind == "integer":
            value = int(value) if value == int(value) else int(value) + 1
        return value
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    length = schema.get("minLength")
    return "x" * length if isinstance(length, int) else ""


def call(tool: Tool) -> ToolCall:
    """The call of ``tool``, with an id in vLLM's ``chatcmpl-tool-`` form."""
    arguments = json.dumps(example_value(tool.parameters) or {}, ensure_ascii=False)
    return ToolCall(id=f"chatcmpl-tool-{uuid.uuid4().hex}", name=tool.name, arguments=arguments)


def rendered_call(name: str, arguments: Any) -> str:
    """How an earlier call reads in a prompt whose template has no tool support (Hermes-style)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    return (
        "<tool_call>\n"
        + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        + "\n</tool_call>"
    )
