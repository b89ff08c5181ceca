"""Guardrails: a tenant's content policies applied to prompts before the engine and to answers after.

Policies are written in the console or ``/api/v1/guardrails`` and mirrored per tenant to Redis
(``guardrails:<tenant id>``, see ``contract``) by ``guardrails.mirror``. Each policy says what it
screens (prompts, completions or both) and an action per rule:

* ``redact`` replaces the match with a label (``[EMAIL]``, ``[CARD]``, …) — the engine, the
  client and the content log only ever see the label;
* ``block`` refuses the request with an OpenAI-shaped 400 (``pii_detected``,
  ``content_blocked``, ``prompt_too_large``); on the answer side the choice's text is withheld and
  its ``finish_reason`` becomes ``content_filter`` (what OpenAI answers for filtered output);
* ``flag`` lets the content pass and records an entry on the ``audit:events`` stream (never the
  content, only which rule matched where) and a Prometheus count.

The regex rules are the hot path, so every detector first asks a question answered in C
(``"@" in text``, a run of digits in a translated copy, a single character before a short
needle: one character is a memchr, a short needle a full pass) and runs its pattern only on the
stretch that could match; checksums run only on candidates, and a body is serialised again only
when a rule changed it. With every detector and a blocked-terms list on, a 1 KB chat body costs
about 15 µs of CPU, 10 KB about 55 µs, and a streamed one-token chunk about 6 µs
(``bench/guardrails.py``; ``bench/gateway.py --only-guardrails`` measures it in the gateway).

Streams are screened over a sliding window: per choice, the last ``hold`` characters (longer than
the longest thing a rule can match) are held back until more text or the end of the choice shows
what they are, so an address split across two chunks is still redacted. Every chunk still goes
out (its text possibly shorter or empty), so the chunk count the metering falls back on and the
engine's usage figures are unchanged.

The optional screening rule embeds the prompt with an embedding model served by Berth (the CPU
engine's, for example) and compares it with the policy's example phrases (cosine similarity
against a threshold), within a time limit; when the limit passes the policy decides whether the
request goes through (fail open) or not (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from prometheus_client import Counter

from contract.redis_names import RedisNames
from gateway.cache import TtlCache
from gateway.errors import GatewayError

logger = logging.getLogger("berth.gateway.guardrails")

HITS = Counter(
    "berth_gateway_guardrail_hits_total",
    "Guardrail rule matches by direction (prompt, completion), rule and action",
    ["direction", "rule", "action"],
)
_HIT_COUNTERS: dict[tuple[str, str, str], Any] = {}  # labels() costs microseconds: once per label set
SCREEN_FAILURES = Counter(
    "berth_gateway_guardrail_screen_failures_total",
    "Screening calls that failed or timed out, by outcome (open: let through, closed: refused)",
    ["outcome"],
)

REDACT, BLOCK, FLAG = "redact", "block", "flag"
ACTIONS = (FLAG, REDACT, BLOCK)  # weakest first: merging policies keeps the strongest
DETECTORS = ("email", "phone", "card", "iban", "secret")
LABELS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "secret": "[SECRET]",
    "blocked_term": "[BLOCKED]",
}
# Longest text a detector matches (the stream's hold-back must be longer).
MAX_MATCH = 160
CONTENT_LOG_CHARS = 65_536


def _stronger(a: str | None, b: str) -> str:
    return b if a is None or ACTIONS.index(b) > ACTIONS.index(a) else a


# ---------------------------------------------------------------------------------- detectors


class Finding(NamedTuple):  # a tuple: made per match on the hot path, cheaper than a dataclass
    start: int
    end: int
    rule: str  # a detector name or "blocked_term"


_EMAIL = re.compile(
    r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,3}\.[A-Za-z]{2,24}"
)
# A run of digits with the separators cards and phone numbers are written with; classified after.
_NUMBER = re.compile(r"[+(\d][\d ().\-]{5,30}\d", re.ASCII)  # ASCII: \d is [0-9], a bitmap test
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}", re.ASCII)
_SECRET = re.compile(
    r"sk-[A-Za-z0-9_\-]{16,120}|berth_[A-Za-z0-9_\-]{12,120}|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,100}|github_pat_[A-Za-z0-9_]{30,120}"
    r"|[Bb]earer[ \t]+[A-Za-z0-9._~+/\-]{16,120}=*"
)
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}", re.ASCII)


# The digit-run prefilter: digits and the separators numbers are written with become "0",
# everything else "x" (one C-level translate of the bytes). A card, a phone number or an IBAN
# leaves a run of at least nine zeros; ordinary prose almost never does, and where one is found
# the patterns run only on that stretch of the text.
_DIGIT_TABLE = bytes(48 if (48 <= c <= 57 or c in b" ().-") else 120 for c in range(256))
_NINE = b"000000000"


def number_windows(text: str) -> list[tuple[int, int]]:
    """The stretches of ``text`` holding a run of nine or more digits and separators."""
    if not text.isascii():
        data = text.encode("utf-8", "replace").translate(_DIGIT_TABLE)
        return [(0, len(text))] if _NINE in data else []
    data = text.encode("ascii").translate(_DIGIT_TABLE)
    windows: list[tuple[int, int]] = []
    at = data.find(_NINE)
    while at != -1:
        start = data.rfind(b"x", 0, at) + 1
        end = data.find(b"x", at)
        end = len(data) if end == -1 else end
        windows.append((start, end))
        at = data.find(_NINE, end)
    return windows


_RUN_CHARS = frozenset("0123456789 ().+-")
_RUN_CHARS_IBAN = _RUN_CHARS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_RUN_STRIP = "".join(sorted(_RUN_CHARS))  # for str.rstrip: the same sets as one C-level strip
_RUN_STRIP_IBAN = "".join(sorted(_RUN_CHARS_IBAN))


_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")  # a doubled digit's digit sum


def luhn_ok(digits: str) -> bool:
    """The Luhn check of a string of ASCII digits, in C-level slices, translates and sums."""
    reverse = digits[::-1]
    kept, doubled = reverse[0::2], reverse[1::2].translate(_LUHN_DOUBLE)
    total = sum(kept.encode()) + sum(doubled.encode()) - 48 * len(digits)
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _word_char(text: str, index: int) -> bool:
    return 0 <= index < len(text) and (text[index].isalnum() or text[index] == "_")


def _numbers(text: str, start: int, end: int, want_card: bool, want_phone: bool) -> Iterable[Finding]:
    for match in _NUMBER.finditer(text, max(0, start - 1), end):
        start, end = match.span()
        if _word_char(text, start - 1) or _word_char(text, end):
            continue
        candidate = match.group()
        digits = candidate.encode().translate(None, b" ().+-").decode()
        count = len(digits)
        if want_card and 13 <= count <= 19 and "(" not in candidate and "." not in candidate:
            if luhn_ok(digits):
                yield Finding(start, end, "card")
                continue
        if want_phone and 9 <= count <= 15 and not _DATE.search(candidate):
            if candidate[0] == "+" or count >= 10:
                yield Finding(start, end, "phone")


def _emails(text: str) -> Iterable[Finding]:
    last_end = -1
    at = text.find("@")
    while at != -1:
        if at >= last_end:
            # The local part holds no whitespace: start at the word the "@" is in, not 64
            # characters back (the pattern would be tried, and fail, at every one of them).
            back = max(0, at - 64, last_end)
            word = max(text.rfind(" ", back, at), text.rfind("\n", back, at)) + 1
            match = _EMAIL.search(text, max(word, back), at + 200)
            if match is not None and match.start() <= at < match.end():
                last_end = match.end()
                yield Finding(match.start(), match.end(), "email")
        at = text.find("@", at + 1)


def _ibans(text: str, start: int, end: int) -> Iterable[Finding]:
    for match in _IBAN.finditer(text, max(0, start - 34), min(len(text), end + 34)):
        start, end = match.span()
        if _word_char(text, start - 1):
            continue
        value = match.group()
        # The greedy tail may have eaten a following word: shorten until the checksum holds.
        while len(value.replace(" ", "")) >= 15:
            if iban_ok(value):
                yield Finding(start, start + len(value), "iban")
                break
            value = value[:-1].rstrip()


def secret_hint(text: str) -> bool:
    """Could ``text`` hold a secret? Single characters first: ``in`` with one character is a
    memchr, a short needle costs a pass over the text (about 1 ns a character), so ``AKIA`` is
    only looked for where a capital K is and ``sk-`` where a hyphen is."""
    return (
        "_" in text  # berth_, gh?_, github_pat_
        or ("-" in text and "sk-" in text)
        or ("K" in text and "AKIA" in text)
        or "earer" in text  # Bearer, bearer
    )


def _secrets(text: str) -> Iterable[Finding]:
    if not secret_hint(text):
        return
    for match in _SECRET.finditer(text):
        if not _word_char(text, match.start() - 1) or match.group().startswith(("sk-", "berth_")):
            yield Finding(match.start(), match.end(), "secret")


# ---------------------------------------------------------------------------------- rule sets


@dataclass(slots=True)
class Screen:
    """The embedding screen of one policy (see the module docstring)."""

    policy_id: str
    policy: str
    model: str
    examples: tuple[str, ...]
    threshold: float
    action: str
    timeout_s: float
    fail_open: bool


@dataclass(slots=True)
class RuleSet:
    """The rules in force for one direction (prompts or completions) of one key, merged."""

    detectors: dict[str, str] = field(default_factory=dict)  # detector -> action
    detector_policy: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (id, name)
    terms: list[tuple[str, re.Pattern[str], str, str, str]] = field(default_factory=list)
    max_chars: int | None = None
    max_tokens: int | None = None
    max_action: str = BLOCK
    max_policy: tuple[str, str] = ("", "")
    screens: list[Screen] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.detectors or self.terms or self.max_chars or self.max_tokens or self.screens)

    # What tail_start and the stream's hold need, worked out once (a rule set is not changed
    # after compile_policies): (hold, last word counts, "Bearer" counts, run characters, longest term).
    _tail: tuple[int, bool, bool, str, int] | None = field(default=None, repr=False, compare=False)

    def _tail_plan(self) -> tuple[int, bool, bool, str, int]:
        detectors = self.detectors
        longest = max((len(term) for term, *_ in self.terms), default=0)
        hold = max(MAX_MATCH if detectors else 0, longest + 2)
        run_chars = ""
        if "card" in detectors or "phone" in detectors or "iban" in detectors:
            run_chars = _RUN_STRIP_IBAN if "iban" in detectors else _RUN_STRIP
        word = "email" in detectors or "secret" in detectors
        self._tail = (hold, word, "secret" in detectors, run_chars, longest)
        return self._tail

    @property
    def hold(self) -> int:
        return (self._tail or self._tail_plan())[0]

    def tail_start(self, text: str) -> int:
        """Where a match still growing with the next chunk could start: keep from here back.

        Addresses and secrets hold no whitespace, so only the last word can be one in the
        making (with ``Bearer`` before it); numbers are runs of digits, separators and, for
        IBANs, capitals; a blocked term is at most its own length. Never more than ``hold``.
        Called per streamed chunk: every scan here is one C call (``rsplit``, ``rstrip``).
        """
        hold, word, bearer, run_chars, longest = self._tail or self._tail_plan()
        end = len(text)
        cut = end
        if word and text and not text[-1].isspace():
            cut = end - len(text.rsplit(None, 1)[-1])
        if bearer and cut >= 6:
            before = text[:cut].rstrip()
            if before[-6:].lower() == "bearer":
                cut = len(before) - 6
        if run_chars:
            cut = min(cut, len(text.rstrip(run_chars)))
        if longest:
            cut = min(cut, end - longest)
        return max(cut, end - hold, 0)

    def find(self, text: str) -> list[tuple[Finding, str, tuple[str, str]]]:
        """Every match in ``text``, without overlaps, with its action and (policy id, name)."""
        found: list[Finding] = []
        detectors = self.detectors
        if "email" in detectors and "@" in text:
            found.extend(_emails(text))
        card, phone, iban = "card" in detectors, "phone" in detectors, "iban" in detectors
        if card or phone or iban:
            for start, end in number_windows(text):
                if card or phone:
                    found.extend(_numbers(text, start, end, card, phone))
                if iban:
                    found.extend(_ibans(text, start, end))
        if "secret" in detectors:
            found.extend(_secrets(text))
        actions: dict[Finding, tuple[str, tuple[str, str]]] | None = None
        if self.terms:
            lowered = text.lower()
            for term, pattern, action, policy_id, name in self.terms:
                if term in lowered:
                    for match in pattern.finditer(text):
                        finding = Finding(match.start(), match.end(), "blocked_term")
                        found.append(finding)
                        if actions is None:
                            actions = {}
                        actions[finding] = (action, (policy_id, name))
        if not found:
            return []
        if actions is None:
            actions = {}
        found.sort(key=lambda f: (f.start, -f.end))
        result = []
        end = -1
        for finding in found:
            if finding.start < end:
                continue  # overlaps a kept one (a card number is not also a phone number)
            end = finding.end
            action, policy = actions.get(finding) or (
                detectors[finding.rule],
                self.detector_policy.get(finding.rule, ("", "")),
            )
            result.append((finding, action, policy))
        return result


def redact(text: str, findings: list[tuple[Finding, str, tuple[str, str]]]) -> str:
    parts = []
    last = 0
    for finding, action, _ in findings:
        if action == REDACT:
            parts.append(text[last : finding.start])
            parts.append(LABELS[finding.rule])
            last = finding.end
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)


def _term_pattern(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)", re.IGNORECASE)


def compile_policies(policies: list[dict], key_id: str | None) -> tuple[RuleSet, RuleSet]:
    """The (prompt, completion) rule sets of the policies that apply to ``key_id``.

    A policy with a ``key_id`` applies to that key only; one without applies to every key of the
    tenant. Where two policies name the same detector, the stronger action wins.
    """
    prompt, completion = RuleSet(), RuleSet()
    for policy in policies:
        if not policy.get("enabled", True):
            continue
        if policy.get("key_id") and policy.get("key_id") != key_id:
            continue
        policy_ref = (str(policy.get("id", "")), str(policy.get("name", "")))
        targets = []
        if policy.get("prompts", True):
            targets.append(prompt)
        if policy.get("completions", False):
            targets.append(completion)
        for rules in targets:
            for name, action in (policy.get("detectors") or {}).items():
                if name in DETECTORS and action in ACTIONS:
                    current = rules.detectors.get(name)
                    stronger = _stronger(current, action)
                    if current is None or stronger != current:
                        rules.detector_policy[name] = policy_ref
                    rules.detectors[name] = stronger
            terms_action = policy.get("blocked_terms_action") or BLOCK
            for term in policy.get("blocked_terms") or ():
                term = str(term).strip()
                if term and terms_action in ACTIONS:
                    rules.terms.append((term.lower(), _term_pattern(term), terms_action, *policy_ref))
        max_chars = policy.get("max_prompt_chars")
        max_tokens = policy.get("max_prompt_tokens")
        if max_chars or max_tokens:
            if max_chars and (prompt.max_chars is None or max_chars < prompt.max_chars):
                prompt.max_chars = int(max_chars)
            if max_tokens and (prompt.max_tokens is None or max_tokens < prompt.max_tokens):
                prompt.max_tokens = int(max_tokens)
            prompt.max_action = _stronger(
                None if prompt.max_policy == ("", "") else prompt.max_action,
                policy.get("max_prompt_action") or BLOCK,
            )
            prompt.max_policy = policy_ref
        screen = policy.get("screen")
        if isinstance(screen, dict) and screen.get("model") and screen.get("examples"):
            prompt.screens.append(
                Screen(
                    policy_id=policy_ref[0],
                    policy=policy_ref[1],
                    model=str(screen["model"]),
                    examples=tuple(str(e) for e in screen["examples"]),
                    threshold=float(screen.get("threshold", 0.8)),
                    action=str(screen["action"]) if screen.get("action") in ACTIONS else BLOCK,
                    timeout_s=max(0.01, float(screen.get("timeout_ms", 500)) / 1000),
                    fail_open=bool(screen.get("fail_open", True)),
                )
            )
    return prompt, completion


# ---------------------------------------------------------------------------------- request texts

Setter = Callable[[str], None]


def _set_item(container: Any, index: Any) -> Setter:
    def setter(value: str) -> None:
        container[index] = value

    return setter


def _content_texts(content: Any, owner: Any, key: Any) -> Iterable[tuple[str, Setter]]:
    """A message's content: a string, or a list of parts with ``text`` (OpenAI and Anthropic)."""
    if isinstance(content, str):
        yield content, _set_item(owner, key)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    yield part["text"], _set_item(part, "text")
                elif isinstance(part.get("content"), str | list):  # tool results
                    yield from _content_texts(part["content"], part, "content")


def prompt_texts(body: dict, endpoint: str) -> Iterable[tuple[str, Setter]]:
    """Every prompt text of a request body and a way to replace it."""
    if endpoint in ("chat", "messages"):
        if endpoint == "messages" and "system" in body:
            yield from _content_texts(body["system"], body, "system")
        for message in body.get("messages") or ():
            if isinstance(message, dict) and "content" in message:
                yield from _content_texts(message["content"], message, "content")
    elif endpoint in ("completions", "embeddings"):
        name = "prompt" if endpoint == "completions" else "input"
        value = body.get(name)
        if isinstance(value, str):
            yield value, _set_item(body, name)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str):
                    yield item, _set_item(value, index)
    elif endpoint == "responses":
        if isinstance(body.get("instructions"), str):
            yield body["instructions"], _set_item(body, "instructions")
        value = body.get("input")
        if isinstance(value, str):
            yield value, _set_item(body, "input")
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and "content" in item:
                    yield from _content_texts(item["content"], item, "content")


def answer_texts(answer: dict) -> Iterable[tuple[str, Setter, dict | None]]:
    """Every generated text of a (non-streaming) answer, a setter, and its choice (or None)."""
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            yield message["content"], _set_item(message, "content"), choice
        elif isinstance(choice.get("text"), str):
            yield choice["text"], _set_item(choice, "text"), choice
    if answer.get("type") == "message":  # Anthropic Messages
        for block in answer.get("content") or ():
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                yield block["text"], _set_item(block, "text"), None
    for item in answer.get("output") or ():  # Responses
        if isinstance(item, dict):
            for part in item.get("content") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"], _set_item(part, "text"), None


# ---------------------------------------------------------------------------------- one request


@dataclass(slots=True)
class Hit:
    direction: str
    rule: str
    action: str
    policy: tuple[str, str]
    count: int = 1


class StreamGuard:
    """The completion rules over one stream's choices, with the sliding hold-back window."""

    def __init__(self, rules: RuleSet, guard: RequestGuard) -> None:
        self.rules = rules
        self.guard = guard
        self.hold = rules.hold if not rules.empty else 0
        self.buffers: dict[int, str] = {}
        self.blocked: set[int] = set()
        self.template: dict[str, Any] | None = None
        self.chat = True

    def _take(self, index: int, text: str, final: bool) -> str:
        if index in self.blocked:
            return ""
        buffer = self.buffers.get(index, "") + text
        if not self.hold:
            self.guard.collect(index, buffer)
            self.buffers[index] = ""
            return buffer
        findings = self.rules.find(buffer)
        if not findings:  # the common case, per chunk: no match, keep back only the tail
            cut = len(buffer) if final else self.rules.tail_start(buffer)
            emitted = buffer[:cut]
            self.buffers[index] = buffer[cut:]
            if self.guard.log_content:
                self.guard.collect(index, emitted)
            return emitted
        if any(action == BLOCK for _, action, _ in findings):
            self.guard.note("completion", findings)
            self.blocked.add(index)
            self.buffers[index] = ""
            return ""
        cut = len(buffer) if final else self.rules.tail_start(buffer)
        for finding, _, _ in findings:
            if finding.start < cut < finding.end:
                cut = finding.start
                break
        done = [f for f in findings if f[0].end <= cut]
        self.guard.note("completion", done)
        emitted = redact(buffer[:cut], done)
        self.buffers[index] = buffer[cut:]
        self.guard.collect(index, emitted)
        return emitted

    def feed(self, out: bytes) -> bytes:
        """Rewrite complete SSE events (``sse.rewrite``'s output) for the client."""
        if not out:
            return out
        events = out.split(b"\n\n")
        result = []
        for raw in events:
            if not raw.startswith(b"data:"):
                result.append(raw)
                continue
            try:
                obj = orjson.loads(raw[5:])
            except orjson.JSONDecodeError:
                result.append(raw)
                continue
            choices = obj.get("choices") if isinstance(obj, dict) else None
            if not choices:
                result.append(raw)
                continue
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
                final = choice.get("finish_reason") is not None
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    text = delta.get("content")
                    if isinstance(text, str) or final:
                        delta["content"] = self._take(index, text if isinstance(text, str) else "", final)
                        if delta["content"] == "" and text is None:
                            del delta["content"]
                elif isinstance(choice.get("text"), str):
                    self.chat = False
                    choice["text"] = self._take(index, choice["text"], final)
                if final:
                    if index in self.blocked:
                        choice["finish_reason"] = "content_filter"
                    self.buffers.pop(index, None)
            self.template = obj
            result.append(b"data: " + orjson.dumps(obj))
        return b"\n\n".join(result)

    def flush(self) -> bytes:
        """At ``[DONE]``: what is still held for choices that never said they finished."""
        out = []
        for index, buffer in list(self.buffers.items()):
            if not buffer:
                continue
            text = self._take(index, "", True)
            self.buffers.pop(index, None)
            if not text:
                continue
            base = self.template or {}
            choice: dict[str, Any] = {"index": index, "finish_reason": None}
            if self.chat:
                choice["delta"] = {"content": text}
            else:
                choice["text"] = text
            chunk: dict[str, Any] = {k: base[k] for k in ("id", "object", "created", "model") if k in base}
            chunk["choices"] = [choice]
            out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return b"".join(out)


class RequestGuard:
    """What the guardrails do for one request: made by ``Guardrails.check``, used by the proxy."""

    def __init__(self, owner: Guardrails, *, tenant_id: str, key_id: str, request_id: str, model: str,
                 endpoint: str, completion: RuleSet, log_content: bool) -> None:  # fmt: skip
        self.owner = owner
        self.tenant_id = tenant_id
        self.key_id = key_id
        self.request_id = request_id
        self.model = model
        self.endpoint = endpoint
        self.completion = completion
        self.log_content = log_content
        self.modified = False  # the prompt was redacted: the engine gets the new body
        self.hits: dict[tuple[str, str, str, str], Hit] = {}
        self.prompt_text: list[str] = []
        self.answer_text: dict[int, list[str]] = {}

    @property
    def screens_answers(self) -> bool:
        return not self.completion.empty or self.log_content

    def note(self, direction: str, findings: list[tuple[Finding, str, tuple[str, str]]]) -> None:
        for finding, action, policy in findings:
            key = (direction, finding.rule, action, policy[0])
            hit = self.hits.get(key)
            if hit is None:
                self.hits[key] = Hit(direction, finding.rule, action, policy)
                counter = _HIT_COUNTERS.get(key[:3])
                if counter is None:
                    counter = _HIT_COUNTERS[key[:3]] = HITS.labels(direction, finding.rule, action)
                counter.inc()
            else:
                hit.count += 1

    def collect(self, index: int, text: str) -> None:
        if self.log_content and text:
            self.answer_text.setdefault(index, []).append(text)

    def answer(self, raw: bytes) -> bytes:
        """A non-streaming answer, its texts screened; the same bytes when nothing changed."""
        if self.completion.empty:
            if self.log_content:
                self.answer_text[0] = [raw[:CONTENT_LOG_CHARS].decode("utf-8", "replace")]
            return raw
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(answer, dict):
            return raw
        changed = False
        for text, setter, choice in list(answer_texts(answer)):
            findings = self.completion.find(text)
            if not findings:
                continue
            self.note("completion", findings)
            changed = True
            if any(action == BLOCK for _, action, _ in findings):
                setter("")
                if choice is not None:
                    choice["finish_reason"] = "content_filter"
            else:
                setter(redact(text, findings))
        out = orjson.dumps(answer) if changed else raw
        if self.log_content:
            self.answer_text[0] = [out[:CONTENT_LOG_CHARS].decode("utf-8", "replace")]
        return out

    def stream(self) -> StreamGuard:
        return StreamGuard(self.completion, self)

    def finish(self, *, status: str, http_status: int) -> None:
        """After the request: the audit events of its flags and blocks, and its content log."""
        self.owner.emit(self, status=status, http_status=http_status)


class Guardrails:
    """The gateway's side: the tenants' mirrored policies, cached ≤1 s, applied per request."""

    def __init__(self, redis: Any, settings: Any, router: Any = None, upstream: Any = None) -> None:
        self.redis = redis
        self.settings = settings
        self.router = router
        self.upstream = upstream
        self.names = RedisNames(settings.redis_prefix)
        self._tenants: TtlCache[str, TenantPolicies | None] = TtlCache(
            settings.key_cache_seconds, max_entries=100_000
        )
        self._examples: dict[tuple[str, str, tuple[str, ...]], list[list[float]]] = {}
        self._background: set[asyncio.Task] = set()

    def invalidate(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id)

    def clear(self) -> None:
        self._tenants.clear()

    async def tenant(self, tenant_id: str) -> TenantPolicies | None:
        return await self._tenants.get(tenant_id, lambda: self._read(tenant_id))

    async def _read(self, tenant_id: str) -> TenantPolicies | None:
        raw = await self.redis.hgetall(self.names.guardrails(tenant_id))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            policies = orjson.loads(fields.get("policies") or "[]")
        except orjson.JSONDecodeError:
            logger.warning("ignoring malformed guardrail policies of tenant %s", tenant_id)
            policies = []
        return TenantPolicies(
            policies if isinstance(policies, list) else [], fields.get("log_content") == "1"
        )

    async def check(self, *, tenant_id: str, key_id: str, request_id: str, model: str, endpoint: str,
                    body: dict) -> RequestGuard | None:  # fmt: skip
        """Screen the prompt of ``body`` (redacted in place); None when no policy applies.

        Raises the 400 of a blocking rule. A flag or block is on ``audit:events`` either way.
        """
        entry = await self.tenant(tenant_id)
        if entry is None:
            return None
        prompt, completion = entry.rules(key_id)
        if prompt.empty and completion.empty and not entry.log_content:
            return None
        guard = RequestGuard(
            self, tenant_id=tenant_id, key_id=key_id, request_id=request_id, model=model,
            endpoint=endpoint, completion=completion, log_content=entry.log_content,
        )  # fmt: skip
        try:
            if not prompt.empty:
                await self._screen_prompt(guard, prompt, body, endpoint)
        except GatewayError as exc:
            guard.finish(status="blocked", http_status=exc.status)
            raise
        if entry.log_content:
            texts = [text for text, _ in prompt_texts(body, endpoint)]
            guard.prompt_text = ["\n".join(texts)[:CONTENT_LOG_CHARS]]
        return guard

    async def _screen_prompt(self, guard: RequestGuard, rules: RuleSet, body: dict, endpoint: str) -> None:
        total = 0
        blocked: tuple[str, tuple[str, str]] | None = None
        for text, setter in list(prompt_texts(body, endpoint)):
            total += len(text)
            findings = rules.find(text)
            if not findings:
                continue
            guard.note("prompt", findings)
            for finding, action, policy in findings:
                if action == BLOCK and blocked is None:
                    blocked = (finding.rule, policy)
            if blocked is None:
                new = redact(text, findings)
                if new != text:
                    setter(new)
                    guard.modified = True
        if blocked is not None:
            rule, policy = blocked
            if rule == "blocked_term":
                raise GatewayError(
                    400,
                    f"The request contains a term that the policy '{policy[1]}' of your organization blocks.",
                    code="content_blocked",
                )
            raise GatewayError(
                400,
                f"The request contains personal or secret data ({rule}) that the policy '{policy[1]}' "
                "of your organization blocks.",
                code="pii_detected",
            )
        too_large = (rules.max_chars is not None and total > rules.max_chars) or (
            rules.max_tokens is not None and total // 4 + 1 > rules.max_tokens
        )
        if too_large:
            finding = Finding(0, 0, "max_prompt")
            guard.note("prompt", [(finding, rules.max_action, rules.max_policy)])
            if rules.max_action == BLOCK:
                limit = (
                    f"{rules.max_chars} characters"
                    if rules.max_chars is not None
                    else f"about {rules.max_tokens} tokens"
                )
                raise GatewayError(
                    400,
                    f"The prompt is larger than the {limit} the policy '{rules.max_policy[1]}' of your "
                    "organization allows.",
                    code="prompt_too_large",
                )
        for screen in rules.screens:
            await self._run_screen(guard, screen, body, endpoint)

    # ------------------------------------------------------------------ the embedding screen

    async def _run_screen(self, guard: RequestGuard, screen: Screen, body: dict, endpoint: str) -> None:
        text = "\n".join(text for text, _ in prompt_texts(body, endpoint))
        if not text.strip():
            return
        try:
            score = await asyncio.wait_for(self._similarity(screen, text), screen.timeout_s)
        except (TimeoutError, ScreenUnavailable) as exc:
            outcome = "open" if screen.fail_open else "closed"
            SCREEN_FAILURES.labels(outcome).inc()
            logger.warning("request %s: screen of policy %s failed (%s): fail %s",
                           guard.request_id, screen.policy, exc or "timeout", outcome)  # fmt: skip
            if screen.fail_open:
                return
            finding = Finding(0, 0, "screen_unavailable")
            guard.note("prompt", [(finding, BLOCK, (screen.policy_id, screen.policy))])
            raise GatewayError(
                503,
                "The content screen your organization requires did not answer in time. Retry the request.",
                type="server_error",
                code="screen_unavailable",
                headers=[(b"retry-after", b"5")],
            ) from None
        if score < screen.threshold:
            return
        guard.note("prompt", [(Finding(0, 0, "screen"), screen.action, (screen.policy_id, screen.policy))])
        if screen.action == BLOCK:
            raise GatewayError(
                400,
                f"The request was refused by the content screen of the policy '{screen.policy}' of your "
                "organization.",
                code="content_blocked",
            )

    async def _embed(self, model: str, texts: list[str]) -> list[list[float]]:
        if self.router is None or self.upstream is None:
            raise ScreenUnavailable("no router")
        info = await self.router.model(model)
        if info is None:
            raise ScreenUnavailable(f"model {model} does not exist")
        workers = await self.router.workers(model)
        if not workers:
            raise ScreenUnavailable(f"model {model} has no ready worker")
        worker = self.router.choose(workers, None)
        result = await self.upstream.post_json(
            worker.url + "/v1/embeddings",
            worker.api_key,
            orjson.dumps({"model": info.served_name, "input": texts}),
            limit_s=30,
        )
        data = result.get("data") if isinstance(result, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            raise ScreenUnavailable("the embedding call failed")
        data = sorted(data, key=lambda item: item.get("index", 0))
        return [item["embedding"] for item in data]

    async def _similarity(self, screen: Screen, text: str) -> float:
        cache_key = (screen.policy_id, screen.model, screen.examples)
        examples = self._examples.get(cache_key)
        if examples is None:
            vectors = await self._embed(screen.model, [text, *screen.examples])
            examples = vectors[1:]
            if len(self._examples) > 1000:
                self._examples.clear()
            self._examples[cache_key] = examples
            prompt = vectors[0]
        else:
            prompt = (await self._embed(screen.model, [text]))[0]
        return max(cosine(prompt, example) for example in examples)

    # ------------------------------------------------------------------ audit events, content log

    def emit(self, guard: RequestGuard, *, status: str, http_status: int) -> None:
        events = []
        now_ms = int(time.time() * 1000)
        for hit in guard.hits.values():
            if hit.action == REDACT:
                continue
            what = "blocked" if hit.action == BLOCK else "flagged"
            where = "the prompt" if hit.direction == "prompt" else "the completion"
            event = {
                "id": str(uuid.uuid4()),
                "ts_ms": now_ms,
                "action": f"guardrail.{hit.action}",
                "tenant_id": guard.tenant_id,
                "key_id": guard.key_id or None,
                "request_id": guard.request_id,
                "summary": f"Guardrail policy '{hit.policy[1]}' {what} {hit.rule} in {where}",
                "detail": {
                    "policy_id": hit.policy[0],
                    "policy": hit.policy[1],
                    "rule": hit.rule,
                    "direction": hit.direction,
                    "matches": hit.count,
                    "model": guard.model,
                    "endpoint": guard.endpoint,
                },
            }
            events.append(orjson.dumps(event))
        content = None
        if guard.log_content:
            content = orjson.dumps(
                {
                    "request_id": guard.request_id,
                    "ts_ms": now_ms,
                    "tenant_id": guard.tenant_id,
                    "key_id": guard.key_id or None,
                    "model": guard.model,
                    "endpoint": guard.endpoint,
                    "status": status,
                    "http_status": http_status,
                    "prompt": "".join(guard.prompt_text),
                    "completion": "\n".join(
                        "".join(parts)[:CONTENT_LOG_CHARS] for _, parts in sorted(guard.answer_text.items())
                    ),
                }
            )
        if not events and content is None:
            return
        task = asyncio.ensure_future(self._write(events, content))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write(self, events: list[bytes], content: bytes | None) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(self.names.audit_events(), {"e": event}, maxlen=1_000_000, approximate=True)
                if content is not None:
                    pipe.xadd(self.names.content_log(), {"e": content}, maxlen=100_000, approximate=True)
                await pipe.execute()
        except Exception:
            logger.warning("could not write guardrail events to Redis", exc_info=True)

    async def drain(self) -> None:
        """At shutdown: wait for the event writes still in flight."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class ScreenUnavailable(Exception):
    pass


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


class TenantPolicies:
    """One tenant's mirrored entry, with its rule sets compiled once per key."""

    def __init__(self, policies: list[dict], log_content: bool) -> None:
        self.policies = policies
        self.log_content = log_content
        self._rules: dict[str, tuple[RuleSet, RuleSet]] = {}

    def rules(self, key_id: str) -> tuple[RuleSet, RuleSet]:
        rules = self._rules.get(key_id)
        if rules is None:
            if len(self._rules) > 10_000:
                self._rules.clear()
            rules = self._rules[key_id] = compile_policies(self.policies, key_id)
        return rules
