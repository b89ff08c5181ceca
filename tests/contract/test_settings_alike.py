"""The settings both sides read from the same variables mean the same on both sides.

Before the contract, the gateway accepted a trailing comma in ``BERTH_KEY_PEPPERS`` and a short
pepper in production, both of which the control plane refused; and an empty
``BERTH_REDIS_PREFIX`` meant ``berth:`` to the gateway but no prefix at all to the control plane,
so the two wrote and read different keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.api_keys import MIN_PEPPER_LENGTH, parse_peppers
from gateway.config import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
LONG, OTHER = "p" * MIN_PEPPER_LENGTH, "q" * (MIN_PEPPER_LENGTH + 8)
CASES = [
    f"a:{LONG}",
    f"a:{LONG},b:{OTHER}",
    f" a:{LONG} , b:{OTHER} ",
    "a:short",
    f"a:{LONG},",
    f"a:{LONG},,b:{OTHER}",
    "no-colon",
    f":{LONG}",
    "a:",
    f"a:{LONG},a:{OTHER}",
    f"a:{LONG}:with:colons",
]

# Import berth.settings afresh per case, in production (DEBUG=0) and development (DEBUG=1) mode.
CONTROL_PLANE = """
import json, os, sys
from django.core.exceptions import ImproperlyConfigured
results = []
for debug, raw in json.loads(sys.argv[1]):
    os.environ["DEBUG"], os.environ["BERTH_KEY_PEPPERS"] = debug, raw
    sys.modules.pop("berth.settings", None)
    try:
        import berth.settings as settings
        results.append(list(settings.KEY_PEPPERS.items()))
    except ImproperlyConfigured as exc:
        results.append(str(exc))
print(json.dumps(results))
"""


PREFIX = """
import json, os, sys
results = []
for raw in json.loads(sys.argv[1]):
    os.environ["BERTH_REDIS_PREFIX"] = raw
    sys.modules.pop("berth.settings", None)
    import berth.settings as settings
    results.append(settings.REDIS_PREFIX)
print(json.dumps(results))
"""


def control_plane(cases: list, script: str = CONTROL_PLANE) -> list:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "ALLOWED_HOSTS": "berth.example",
        "SECRET_KEY": "s" * 64,
        "DATABASE_URL": "postgresql://berth:berth@127.0.0.1:1/berth",
        "BERTH_INTERNAL_TOKEN": "i" * 40,
        "BERTH_KEY_PEPPERS": f"a:{LONG}",
        "DEBUG": "0",
    }
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script, json.dumps(cases)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def gateway(debug: str, raw: str) -> list | str:
    try:
        config = GatewaySettings(key_peppers=raw, debug_raw=debug, internal_token="i" * 40)
    except ValidationError as exc:
        return str(exc)
    return [[pid, secret.decode()] for pid, secret in config.peppers().items()]


def test_both_sides_accept_and_refuse_the_same_peppers():
    cases = [(debug, raw) for debug in ("0", "1") for raw in CASES]
    web = control_plane(cases)
    for (debug, raw), web_result in zip(cases, web, strict=True):
        gw_result = gateway(debug, raw)
        if isinstance(web_result, str):
            assert isinstance(gw_result, str), f"DEBUG={debug} {raw!r}: the gateway accepted, the web refused"
            assert web_result in gw_result  # the same message
        else:
            assert gw_result == web_result, f"DEBUG={debug} {raw!r}"
    accepted = {
        (debug, raw) for (debug, raw), result in zip(cases, web, strict=True) if isinstance(result, list)
    }
    assert accepted == {
        (debug, raw)
        for debug in ("0", "1")
        for raw in (f"a:{LONG}", f"a:{LONG},b:{OTHER}", f" a:{LONG} , b:{OTHER} ", f"a:{LONG}:with:colons")
    } | {("1", "a:short")}


def test_the_first_pepper_signs_and_secrets_may_contain_colons():
    assert list(parse_peppers(f"new:{LONG},old:{OTHER}", require_strong=True)) == ["new", "old"]
    assert parse_peppers(f"a:{LONG}:x", require_strong=True) == {"a": f"{LONG}:x"}


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_missing_peppers_are_refused(raw):
    with pytest.raises(ValueError, match="must be set"):
        parse_peppers(raw, require_strong=False)


def test_messages_never_contain_a_secret():
    for raw in (f"a:{LONG},a:{OTHER}", "a:short-secret-value"):
        with pytest.raises(ValueError) as refused:
            parse_peppers(raw, require_strong=True)
        assert LONG not in str(refused.value) and OTHER not in str(refused.value)
        assert "short-secret-value" not in str(refused.value)


def test_both_sides_read_the_redis_prefix_alike():
    cases = ["", "tenant-a:", "berth:"]
    web = control_plane(cases, PREFIX)
    gw = [
        GatewaySettings(
            redis_prefix=raw, key_peppers=f"a:{LONG}", debug_raw="0", internal_token="i" * 40
        ).redis_prefix
        for raw in cases
    ]
    assert web == gw == ["berth:", "tenant-a:", "berth:"]
