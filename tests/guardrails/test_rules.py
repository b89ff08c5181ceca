"""The gateway's guardrail rules on their own: detectors, actions, merging, the stream window."""

from __future__ import annotations

import orjson
import pytest

from gateway.guardrails import (
    DETECTORS,
    RequestGuard,
    compile_policies,
    iban_ok,
    luhn_ok,
    number_windows,
    prompt_texts,
    redact,
)

ALL_REDACT = {"id": "p1", "name": "pii", "detectors": dict.fromkeys(DETECTORS, "redact")}


def rules(*policies, key_id="k1"):
    return compile_policies(list(policies), key_id)


def redacted(text: str, policy=ALL_REDACT) -> str:
    prompt, _ = rules(policy)
    return redact(text, prompt.find(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.roe+tag@mail.example.co.uk today", "write to [EMAIL] today"),
        ("call +44 20 7946 0958 now", "call [PHONE] now"),
        ("or (415) 555-0132.", "or [PHONE]."),
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("iban GB82 WEST 1234 5698 7654 32 done", "iban [IBAN] done"),
        ("iban DE89370400440532013000", "iban [IBAN]"),
        ("key sk-abcdefghijklmnop1234 here", "key [SECRET] here"),
        ("key sk-berth-AbCdEfGhIjKl_secretsecretsecret", "key [SECRET]"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [SECRET]"),
        ("gh ghp_" + "a" * 36, "gh [SECRET]"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "Authorization: [SECRET]"),
    ],
)
def test_each_detector_redacts_with_its_label(text, expected):
    assert redacted(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails the Luhn check",  # and is too long for a phone number
        "iban GB82WEST12345698765433 fails mod 97",
        "on 2024-01-15 at 10:30 we sold 12345 units for 99.50",
        "no address here @ all, user@localhost",
        "task-sk-short and AKIA123",
        "٤١١١ ١١١١ ١١١١ ١١١١ and ٠١٢٣٤٥٦٧٨٩٠",  # digits of other scripts are not card numbers
    ],
)
def test_lookalikes_are_left_alone(text):
    assert "[" not in redacted(text), redacted(text)


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def test_number_windows_skip_prose_and_find_numbers():
    assert number_windows("revenue grew by 12 percent in 2024 and 3 of 4 agreed") == []
    text = "pay with 4111 1111 1111 1111 please"
    [(start, end)] = number_windows(text)
    assert "4111 1111 1111 1111" in text[start:end]


def test_blocked_terms_are_whole_words_and_case_insensitive():
    prompt, _ = rules({"id": "t", "name": "terms", "blocked_terms": ["Project Falcon"]})
    assert [f.rule for f, _, _ in prompt.find("about PROJECT falcon, please")] == ["blocked_term"]
    assert prompt.find("projectfalcon or project falcons") == []


def test_the_stronger_action_wins_and_key_policies_apply_to_their_key_only():
    flag = {"id": "a", "name": "flag", "detectors": {"email": "flag"}}
    block_for_k2 = {"id": "b", "name": "block", "key_id": "k2", "detectors": {"email": "block"}}
    prompt_k1, _ = rules(flag, block_for_k2, key_id="k1")
    prompt_k2, _ = rules(flag, block_for_k2, key_id="k2")
    assert prompt_k1.detectors == {"email": "flag"}
    assert prompt_k2.detectors == {"email": "block"}
    assert prompt_k2.detector_policy["email"] == ("b", "block")


def test_disabled_policies_and_directions():
    prompt, completion = rules({**ALL_REDACT, "enabled": False})
    assert prompt.empty and completion.empty
    prompt, completion = rules({**ALL_REDACT, "prompts": False, "completions": True})
    assert prompt.empty and not completion.empty


def test_prompt_texts_cover_every_message_shape():
    body = {
        "messages": [
            {"role": "system", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url"}]},
            {"role": "tool", "content": [{"type": "tool_result", "content": "c"}]},
        ],
        "system": "s",
    }
    assert [t for t, _ in prompt_texts(body, "chat")] == ["a", "b", "c"]
    assert [t for t, _ in prompt_texts(body, "messages")] == ["s", "a", "b", "c"]
    assert [t for t, _ in prompt_texts({"input": ["x", "y"]}, "embeddings")] == ["x", "y"]
    assert [t for t, _ in prompt_texts({"prompt": "p"}, "completions")] == ["p"]
    responses = {
        "instructions": "i",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "r"}]}],
    }
    assert [t for t, _ in prompt_texts(responses, "responses")] == ["i", "r"]


class _Owner:
    def emit(self, guard, **kwargs):
        self.emitted = (guard, kwargs)


def _guard(policy, log_content=False) -> RequestGuard:
    _, completion = compile_policies([policy], "k1")
    return RequestGuard(_Owner(), tenant_id="t", key_id="k1", request_id="r", model="m",
                        endpoint="chat", completion=completion, log_content=log_content)  # fmt: skip


def _sse(*deltas, finish=True) -> list[bytes]:
    events = []
    for number, text in enumerate(deltas):
        last = finish and number == len(deltas) - 1
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop" if last else None}]}  # fmt: skip
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    return events


def _texts(out: bytes) -> str:
    texts = []
    for event in out.split(b"\n\n"):
        if event.startswith(b"data: "):
            for choice in orjson.loads(event[6:])["choices"]:
                texts.append(choice["delta"].get("content") or "")
    return "".join(texts)


def test_an_address_split_across_chunks_is_still_redacted():
    completion_policy = {**ALL_REDACT, "prompts": False, "completions": True}
    stream = _guard(completion_policy).stream()
    pieces = ["Sure, write to jane.", "roe@exam", "ple.org and I will ", "answer. " * 30, "Bye."]
    outs = [stream.feed(event) for event in _sse(*pieces)]
    text = "".join(_texts(out) for out in outs)
    assert text == "Sure, write to [EMAIL] and I will " + "answer. " * 30 + "Bye."
    assert len([o for o in outs if o]) == len(pieces)  # every chunk still goes out


def test_a_stream_without_finish_reason_is_flushed_at_done():
    stream = _guard({**ALL_REDACT, "completions": True}).stream()
    out = b"".join(stream.feed(event) for event in _sse("mail me at a@b", ".com", finish=False))
    out += stream.flush()
    assert _texts(out) == "mail me at [EMAIL]"


def test_a_blocking_rule_in_a_stream_withholds_the_rest_and_says_content_filter():
    stream = _guard({"id": "b", "name": "b", "completions": True, "detectors": {"card": "block"}}).stream()
    outs = [stream.feed(e) for e in _sse("the card is 4111 1111 ", "1111 1111, ", "anything else")]
    last = orjson.loads(outs[-1].split(b"\n\n")[0][6:])
    assert "4111" not in "".join(_texts(o) for o in outs)
    assert last["choices"][0]["finish_reason"] == "content_filter"


def test_a_plain_answer_is_redacted_or_filtered():
    guard = _guard({**ALL_REDACT, "completions": True})
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "it is a@b.com"}, "finish_reason": "stop"}]}  # fmt: skip
    out = orjson.loads(guard.answer(orjson.dumps(answer)))
    assert out["choices"][0]["message"]["content"] == "it is [EMAIL]"
    guard = _guard({"id": "b", "name": "b", "completions": True, "detectors": {"email": "block"}})
    out = orjson.loads(guard.answer(orjson.dumps(answer)))
    assert out["choices"][0]["message"]["content"] == ""
    assert out["choices"][0]["finish_reason"] == "content_filter"


def test_the_stream_holds_back_only_what_could_still_become_a_match():
    stream = _guard({**ALL_REDACT, "completions": True}).stream()
    first = _texts(stream.feed(_sse("Here is the plan for today. Write to jane", finish=False)[0]))
    assert first == "Here is the plan for today. Write to "  # not 160 characters behind
    second = _texts(stream.feed(_sse("@example.com or call +1 415", finish=False)[0]))
    assert second == "[EMAIL] or call"
    rest = _texts(b"".join(stream.feed(e) for e in _sse(" 555 0132 ok")))
    assert rest == " [PHONE] ok"


def test_a_bearer_token_split_from_its_scheme_is_still_redacted():
    stream = _guard({**ALL_REDACT, "completions": True}).stream()
    events = _sse("use Authorization: Bearer ", "abcdefghijklmnopqrstuvwxyz0123 to call")
    assert _texts(b"".join(stream.feed(e) for e in events)) == "use Authorization: [SECRET] to call"


# ---------------------------------------------------------------------- the cheap pre-filters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail\tjane+news@example.org\tnow", "mail\t[EMAIL]\tnow"),  # a plus sign, tabs around
        ("<jane.roe+a.b@example.org>", "<[EMAIL]>"),
        ("line one\njane@example.org", "line one\n[EMAIL]"),
        ("a@b.co and c@d.org", "[EMAIL] and [EMAIL]"),  # two in a row, one pass
        ("x" * 70 + " " + "k" * 60 + "@example.org", "x" * 70 + " [EMAIL]"),  # a long local part
        ("card 4111-1111-1111-1111.", "card [CARD]."),  # dashes, then a full stop
        ("card 4111 1111 1111 1111, thanks", "card [CARD], thanks"),
        ("card 4111 - 1111 - 1111 - 1111 ok", "card [CARD] ok"),
        ("aws key AKIAIOSFODNN7EXAMPLE", "aws key [SECRET]"),  # found behind the capital-K gate
        ("OK: sk-abcdefghijklmnop1234", "OK: [SECRET]"),  # behind the hyphen gate
        ("bearer abcdefghijklmnopqrstuvwxyz", "[SECRET]"),
    ],
)
def test_pre_filter_edges(text, expected):
    assert redacted(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Kubernetes and OK, no key",  # a capital K but no AKIA
        "a well-known follow-up, no sk key",  # hyphens but no sk-
        "the hearer heard it",  # "earer" in prose, no token after
    ],
)
def test_pre_filter_hints_alone_find_nothing(text):
    assert redacted(text) == text


def _old_tail_start(rules, text: str) -> int:
    """The per-character loops tail_start replaced, kept here as the reference."""
    end = cut = len(text)
    detectors = rules.detectors
    if "email" in detectors or "secret" in detectors:
        word = end
        while word > 0 and not text[word - 1].isspace():
            word -= 1
        cut = word
        if "secret" in detectors:
            before = text[:word].rstrip()
            if before[-6:].lower() == "bearer":
                cut = len(before) - 6
    if "card" in detectors or "phone" in detectors or "iban" in detectors:
        allowed = set("0123456789 ().+-") | (
            set("ABCDEFGHIJKLMNOPQRSTUVWXYZ") if "iban" in detectors else set()
        )
        run = end
        while run > 0 and text[run - 1] in allowed:
            run -= 1
        cut = min(cut, run)
    if rules.terms:
        cut = min(cut, end - max(len(term) for term, *_ in rules.terms))
    return max(cut, end - rules.hold, 0)


@pytest.mark.parametrize(
    "policy",
    [
        ALL_REDACT,
        {"id": "n", "name": "n", "detectors": {"phone": "redact", "card": "flag"}},
        {"id": "e", "name": "e", "detectors": {"email": "redact"}, "blocked_terms": ["internal only"]},
        {"id": "t", "name": "t", "blocked_terms": ["x", "project nightingale"]},
    ],
)
def test_tail_start_keeps_what_the_character_loops_kept(policy):
    import random

    prompt, _ = rules(policy)
    alphabet = "ab Z9 0.-()+@_\n\tBearer "
    generator = random.Random(7)
    samples = ["", " ", "tok ", "write to jane", "Authorization: Bearer ", "call +1 415 555", "GB82 WEST 12"]
    samples += [
        "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 40))) for _ in range(400)
    ]
    for text in samples:
        assert prompt.tail_start(text) == _old_tail_start(prompt, text), repr(text)


def test_a_clean_stream_goes_out_unchanged_and_holds_only_the_last_word():
    stream = _guard({**ALL_REDACT, "completions": True, "blocked_terms": ["internal only"]}).stream()
    pieces = ["tok "] * 50 + ["done."]
    text = "".join(_texts(stream.feed(event)) for event in _sse(*pieces))
    assert text == "tok " * 50 + "done."
