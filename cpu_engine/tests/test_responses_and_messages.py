"""The Responses and Messages APIs and tool calls on the CPU chat engine, through the official
``openai`` and ``anthropic`` SDKs pointed straight at a real engine process."""

from __future__ import annotations

import json
import time
import uuid

import anthropic
import httpx
import openai
import pytest

from cpu_engine.tests.engine_process import Engine

pytestmark = [pytest.mark.engine, pytest.mark.processes]

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1},
        "note": {"type": "string"},
    },
    "required": ["city", "unit", "days"],
}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


@pytest.fixture
def client(chat_engine: Engine) -> openai.OpenAI:
    with openai.OpenAI(base_url=chat_engine.base_url, api_key=chat_engine.spec.api_key, max_retries=0) as c:
        yield c


@pytest.fixture
def claude(chat_engine: Engine) -> anthropic.Anthropic:
    with anthropic.Anthropic(base_url=chat_engine.url, api_key=chat_engine.spec.api_key, max_retries=0) as c:
        yield c


def model(engine: Engine) -> str:
    return engine.spec.served_name


def prompt_tokens(engine: Engine, messages: list[dict]) -> int:
    r = httpx.post(f"{engine.url}/tokenize", json={"messages": messages}, timeout=10)
    assert r.status_code == 200
    return r.json()["count"]


def text_tokens(engine: Engine, text: str) -> int:
    r = httpx.post(f"{engine.url}/tokenize", json={"prompt": text, "add_special_tokens": False}, timeout=10)
    return r.json()["count"]


# -- Responses -------------------------------------------------------------------------------------


def test_responses_create_bills_the_prompt_and_the_output_and_can_be_retrieved(chat_engine, client):
    reply = client.responses.create(
        model=model(chat_engine), instructions="Be brief.", input="Tell me about tides.", max_output_tokens=6
    )
    assert reply.id.startswith("resp_")
    assert reply.object == "response"
    assert reply.model == model(chat_engine)
    expected = prompt_tokens(
        chat_engine,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about tides."}],
    )
    usage = reply.usage
    assert usage.input_tokens == expected
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    if reply.status == "incomplete":
        assert usage.output_tokens == 6
        assert reply.incomplete_details.reason == "max_output_tokens"
    else:
        assert reply.status == "completed"
        assert 1 <= usage.output_tokens <= 6
    assert reply.output[0].type == "message"
    assert reply.output_text == reply.output[0].content[0].text

    again = client.responses.retrieve(reply.id)
    assert again.id == reply.id
    assert again.output_text == reply.output_text
    assert again.usage == reply.usage


def test_responses_stream_sends_the_typed_events_in_order(chat_engine, client):
    events = list(
        client.responses.create(
            model=model(chat_engine), input="Say something.", max_output_tokens=8, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert done.output_text == streamed
    assert events[-4].text == streamed
    assert done.usage.input_tokens == prompt_tokens(
        chat_engine, [{"role": "user", "content": "Say something."}]
    )
    # Greedy, so the same request unstreamed gives the same text and the same bill.
    whole = client.responses.create(
        model=model(chat_engine), input="Say something.", max_output_tokens=8, temperature=0
    )
    assert whole.output_text == streamed
    assert whole.usage.output_tokens == done.usage.output_tokens
    assert client.responses.retrieve(done.id).output_text == streamed


def test_responses_report_the_prompt_tokens_the_prefix_cache_served(chat_engine, client):
    # Long enough for whole 64-token blocks; unique, so the first request finds nothing cached.
    instructions = f"Session {uuid.uuid4().hex}. " + "Answer in the voice of a lighthouse keeper. " * 20
    kwargs = {"model": model(chat_engine), "instructions": instructions, "max_output_tokens": 2}
    first = client.responses.create(input="Hello.", **kwargs)
    assert first.usage.input_tokens_details.cached_tokens == 0
    second = client.responses.create(input="Hello.", **kwargs)
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached > 0
    assert cached % 64 == 0  # whole blocks
    assert cached <= second.usage.input_tokens
    events = list(client.responses.create(input="Hello.", stream=True, **kwargs))
    assert events[-1].response.usage.input_tokens_details.cached_tokens == cached


def test_responses_with_store_false_are_not_kept(chat_engine, client):
    reply = client.responses.create(model=model(chat_engine), input="hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    with pytest.raises(openai.BadRequestError, match="begins with 'resp'"):
        client.responses.retrieve("chatcmpl-123")


def test_a_background_response_can_be_cancelled_and_a_finished_one_cannot(chat_engine, client):
    reply = client.responses.create(
        model=model(chat_engine),
        input="Count forever.",
        max_output_tokens=1500,
        background=True,
        extra_body={"ignore_eos": True},
    )
    assert reply.status in ("queued", "in_progress")
    cancelled = client.responses.cancel(reply.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(reply.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="Cannot cancel"):
        client.responses.cancel(reply.id)

    finished = client.responses.create(model=model(chat_engine), input="hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        client.responses.cancel(finished.id)


def test_a_background_response_completes_and_is_retrieved_with_its_usage(chat_engine, client):
    reply = client.responses.create(
        model=model(chat_engine), input="hi", max_output_tokens=3, background=True
    )
    deadline = time.monotonic() + 30
    while (current := client.responses.retrieve(reply.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert current.status in ("completed", "incomplete")
    assert current.usage.output_tokens >= 1
    assert current.usage.input_tokens == prompt_tokens(chat_engine, [{"role": "user", "content": "hi"}])


def test_previous_response_id_continues_the_conversation(chat_engine, client):
    first = client.responses.create(
        model=model(chat_engine), input="Hello.", max_output_tokens=4, temperature=0
    )
    second = client.responses.create(
        model=model(chat_engine), input="And then?", previous_response_id=first.id, max_output_tokens=4
    )
    history = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And then?"},
    ]
    assert second.usage.input_tokens == prompt_tokens(chat_engine, history)
    assert second.previous_response_id == first.id


def test_responses_refuse_input_they_cannot_read(chat_engine, client):
    with pytest.raises(openai.BadRequestError, match="only text content"):
        client.responses.create(
            model=model(chat_engine),
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}],
        )
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.create(model=model(chat_engine), input="hi", background=True, store=False)


def test_responses_return_a_forced_function_call_and_take_its_output_back(chat_engine, client):
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    reply = client.responses.create(
        model=model(chat_engine), input="Weather?", tools=tools, tool_choice="required"
    )
    call = reply.output[0]
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "", "unit": "celsius", "days": 1}
    assert reply.usage.output_tokens == text_tokens(chat_engine, call.arguments)

    follow = client.responses.create(
        model=model(chat_engine),
        input=[
            {"role": "user", "content": "Weather?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=tools,
        tool_choice="none",
        max_output_tokens=3,
    )
    assert follow.output[0].type == "message"

    events = list(
        client.responses.create(
            model=model(chat_engine),
            input="Weather?",
            tools=tools,
            tool_choice={"type": "function", "name": "get_weather"},
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert events[-1].response.output[0].arguments == call.arguments


# -- chat completions with tools -------------------------------------------------------------------


def test_chat_with_a_forced_tool_returns_a_call_that_follows_the_schema(chat_engine, client):
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    reply = client.chat.completions.create(
        model=model(chat_engine),
        messages=messages,
        tools=CHAT_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == set(WEATHER["required"])
    assert arguments["unit"] in WEATHER["properties"]["unit"]["enum"]
    assert arguments["days"] >= 1
    assert reply.usage.completion_tokens == text_tokens(chat_engine, call.function.arguments)
    assert reply.usage.prompt_tokens == prompt_tokens(chat_engine, messages)


def test_chat_streams_a_tool_call_as_vllm_does(chat_engine, client):
    stream = client.chat.completions.create(
        model=model(chat_engine),
        messages=[{"role": "user", "content": "Weather?"}],
        tools=CHAT_TOOLS,
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert calls[0].id and calls[0].function.name == "get_weather"
    arguments = "".join(c.function.arguments or "" for c in calls)
    assert set(json.loads(arguments)) == set(WEATHER["required"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == text_tokens(chat_engine, arguments)


def test_chat_refuses_auto_tool_choice_instead_of_ignoring_the_tools(chat_engine, client):
    with pytest.raises(openai.BadRequestError, match='tool_choice "auto" is not supported') as caught:
        client.chat.completions.create(
            model=model(chat_engine), messages=[{"role": "user", "content": "hi"}], tools=CHAT_TOOLS
        )
    assert caught.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(
            model=model(chat_engine),
            messages=[{"role": "user", "content": "hi"}],
            tools=CHAT_TOOLS,
            tool_choice={"type": "function", "function": {"name": "missing"}},
        )


def test_chat_accepts_earlier_calls_and_tool_results_in_the_conversation(chat_engine, client):
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call-1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call-1", "content": "Sunny, 21 degrees."},
    ]
    reply = client.chat.completions.create(
        model=model(chat_engine), messages=messages, tools=CHAT_TOOLS, tool_choice="none", max_tokens=4
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    # The earlier call and the result are in the prompt: it is longer than the question alone.
    assert reply.usage.prompt_tokens == prompt_tokens(chat_engine, messages)
    assert reply.usage.prompt_tokens > prompt_tokens(chat_engine, messages[:1]) + 10


# -- Anthropic Messages ----------------------------------------------------------------------------


def test_messages_create_reports_usage_that_count_tokens_agrees_with(chat_engine, claude):
    messages = [{"role": "user", "content": "Tell me about ships."}]
    reply = claude.messages.create(
        model=model(chat_engine), max_tokens=5, system="Be brief.", messages=messages
    )
    assert reply.type == "message"
    assert reply.role == "assistant"
    assert reply.id.startswith("msg_")
    assert reply.content[0].type == "text"
    counted = claude.messages.count_tokens(model=model(chat_engine), system="Be brief.", messages=messages)
    assert reply.usage.input_tokens == counted.input_tokens
    assert counted.input_tokens == prompt_tokens(
        chat_engine, [{"role": "system", "content": "Be brief."}, *messages]
    )
    if reply.stop_reason == "max_tokens":
        assert reply.usage.output_tokens == 5
    else:
        assert reply.stop_reason == "end_turn"
        assert 1 <= reply.usage.output_tokens <= 5


def test_messages_stream_events_and_final_usage(chat_engine, claude):
    kwargs = {
        "model": model(chat_engine),
        "max_tokens": 8,
        # This SDK release has no sampling arguments; Anthropic's API and this engine still take them.
        "extra_body": {"temperature": 0},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say something."}]}],
    }
    with claude.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    whole = claude.messages.create(**kwargs)
    assert final.content[0].text == whole.content[0].text
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.stop_reason == whole.stop_reason


def test_messages_stop_at_a_stop_sequence_and_say_which(chat_engine, claude):
    kwargs = {"model": model(chat_engine), "max_tokens": 24, "extra_body": {"temperature": 0}}
    messages = [{"role": "user", "content": "Go on."}]
    text = claude.messages.create(messages=messages, **kwargs).content[0].text
    assert len(text) > 12
    stop = text[8:11]
    cut = claude.messages.create(messages=messages, stop_sequences=[stop], **kwargs)
    assert cut.stop_reason == "stop_sequence"
    assert cut.stop_sequence == stop
    assert cut.content[0].text == text[: text.index(stop)]


def test_messages_errors_come_in_anthropics_shape(chat_engine, claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model=model(chat_engine), messages=[{"role": "user", "content": "hi"}], max_tokens=0
        )
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    with anthropic.Anthropic(base_url=chat_engine.url, api_key="wrong", max_retries=0) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as denied:
            stranger.messages.create(
                model=model(chat_engine), messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    assert denied.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError, match="auto"):
        claude.messages.create(
            model=model(chat_engine),
            max_tokens=2,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"name": "get_weather", "input_schema": WEATHER}],
        )


def test_messages_return_a_forced_tool_use_and_take_its_result(chat_engine, claude):
    tools = [{"name": "get_weather", "input_schema": WEATHER}]
    reply = claude.messages.create(
        model=model(chat_engine),
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert reply.stop_reason == "tool_use"
    (block,) = reply.content
    assert block.type == "tool_use"
    assert block.input == {"city": "", "unit": "celsius", "days": 1}
    follow = claude.messages.create(
        model=model(chat_engine),
        max_tokens=3,
        tools=tools,
        tool_choice={"type": "none"},
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}],
            },
        ],
    )
    assert follow.content[0].type == "text"
    with claude.messages.stream(
        model=model(chat_engine),
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=tools,
        tool_choice={"type": "any"},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == block.input
