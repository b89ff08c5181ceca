"""The contract's builders and parsers on their own (no Redis, no Django)."""

from __future__ import annotations

import hashlib

import pytest

from contract import api_keys, engine_metrics, invalidation
from contract.invalidation import Invalidation, Kind, Unknown
from contract.redis_names import RedisNames, normalize_prefix

NAMES = RedisNames("p:")


def test_every_name_is_under_the_prefix_and_distinct():
    built = [
        NAMES.api_key("L"),
        NAMES.tenant("T"),
        NAMES.model("m"),
        NAMES.models(),
        NAMES.route("m"),
        NAMES.routes(),
        NAMES.invalidate_channel(),
        NAMES.engine_load(),
        NAMES.engine_scraper_lock(),
        NAMES.demand("m"),
        NAMES.usage_stream(),
        NAMES.usage_dead_letter(),
        NAMES.usage_checkpoints(),
        NAMES.usage_checkpoints_due(),
        NAMES.key_last_used(),
        NAMES.key_last_used_flushing("x"),
        NAMES.quota_rpm("T", 1),
        NAMES.quota_tpm("T", 1),
        NAMES.quota_concurrency("T"),
        NAMES.quota_monthly_tokens("T", "202611"),
        NAMES.spend_counter("T", "m202611"),
        NAMES.spend_blocked("T"),
        NAMES.lora_held("w"),
    ]
    assert all(name.startswith("p:") for name in built)
    assert len(set(built)) == len(built)


def test_the_layout_is_what_running_deployments_have_in_redis():
    """Renaming one would orphan what a running deployment holds: these are the deployed names."""
    assert NAMES.api_key("AbC") == "p:apikey:AbC"
    assert NAMES.route("m") == "p:route:m"
    assert NAMES.usage_stream() == "p:usage"
    assert NAMES.usage_checkpoints_due() == "p:usage_ckpt_due"
    assert NAMES.quota_concurrency("t1") == "p:q:{t1}:t:conc"
    assert NAMES.spend_counter("t1", "d20261129") == "p:q:{t1}:spend:d20261129"
    assert NAMES.spend_blocked("t1") == "p:q:{t1}:spend_blocked"
    assert NAMES.engine_scraper_lock() == "p:lock:engine_scraper"


def test_quota_keys_of_one_tenant_share_a_cluster_slot():
    tags = {
        name[name.index("{") + 1 : name.index("}")]
        for name in (
            NAMES.quota_rpm("t1", 5),
            NAMES.quota_tpm("t1", 5),
            NAMES.quota_concurrency("t1"),
            NAMES.quota_monthly_tokens("t1", "202611"),
            NAMES.spend_counter("t1", "m202611"),
            NAMES.spend_blocked("t1"),
        )
    }
    assert tags == {"t1"}


def test_names_found_by_a_scan_give_back_their_ids():
    assert NAMES.route_model_of(NAMES.route("org/model:7b")) == "org/model:7b"
    assert NAMES.tenant_id_of(NAMES.tenant("abc")) == "abc"
    assert NAMES.lookup_id_of(NAMES.api_key("AbC123")) == "AbC123"
    assert NAMES.lora_worker_of(NAMES.lora_held("w-1:abc")) == "w-1:abc"
    assert NAMES.lora_held("w1") == "p:lora:w1"


@pytest.mark.parametrize("value", [None, ""])
def test_an_empty_prefix_means_the_default_on_both_sides(value):
    assert normalize_prefix(value) == "berth:"
    assert normalize_prefix("x:") == "x:"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (invalidation.api_key("AbC"), Invalidation(Kind.API_KEY, "AbC")),
        (invalidation.tenant("t-1"), Invalidation(Kind.TENANT, "t-1")),
        (invalidation.model("org/m:7b"), Invalidation(Kind.MODEL, "org/m:7b")),
        (invalidation.route("m").encode(), Invalidation(Kind.ROUTE, "m")),
        ("flush", Unknown("flush")),
        ("apikey", Unknown("apikey")),
        ("worker:1", Unknown("worker:1")),
    ],
)
def test_invalidation_messages_parse_back(message, expected):
    assert invalidation.parse(message) == expected


def test_a_key_formats_and_parses_back():
    secret = api_keys.secret_from_bytes(hashlib.sha256(b"x").digest())
    for kind in (api_keys.INFERENCE, api_keys.MANAGEMENT):
        raw = api_keys.format_key(kind=kind, lookup_id="A" * api_keys.LOOKUP_LENGTH, secret=secret)
        assert api_keys.parse_key(f"  {raw} ") == api_keys.ParsedKey(
            kind, "A" * api_keys.LOOKUP_LENGTH, secret
        )


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "sk-berth-",
        "sk-berth-" + "A" * 12 + "-" + "s" * 43,
        "sk-berth-" + "A" * 11 + "_" + "s" * 43,
        "sk-berth-" + "A" * 12 + "_" + "s" * 42,
        "xk-berth-" + "A" * 12 + "_" + "s" * 43,
    ],
)
def test_malformed_keys_do_not_parse(raw):
    assert api_keys.parse_key(raw) is None


def test_the_digest_is_hmac_sha256_of_the_secret_under_the_pepper():
    import hmac

    expected = hmac.new(b"pepper", b"secret", hashlib.sha256).hexdigest()
    assert (
        api_keys.secret_digest("pepper", "secret") == expected == api_keys.secret_digest(b"pepper", b"secret")
    )
    assert api_keys.digest_matches(expected, expected)
    assert not api_keys.digest_matches(expected, api_keys.secret_digest("other", "secret"))


def test_engine_metrics_sum_the_gauges_over_label_sets():
    text = (
        '# HELP x\nvllm:num_requests_waiting{model_name="m",engine="0"} 3.0\n'
        'vllm:num_requests_waiting{model_name="m",engine="1"} 2.0\n'
        'vllm:num_requests_running{model_name="m"} 7\nvllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    )
    assert engine_metrics.parse(text).as_dict() == {"waiting": 5.0, "running": 7.0, "kv": 0.25}


def test_engine_metrics_read_the_value_not_the_timestamp():
    """Before: the gateway read the last field of a line, which is the sample's timestamp if any."""
    text = 'vllm:num_requests_waiting{model_name="m"} 4 1732900000000\nvllm:num_requests_running 1 1732900000000\n'
    load = engine_metrics.parse(text)
    assert (load.waiting, load.running) == (4.0, 1.0)


def test_engine_metrics_skip_malformed_and_non_finite_samples():
    text = (
        "vllm:num_requests_waiting{broken 3\nvllm:num_requests_waiting NaN\n"
        "vllm:num_requests_waiting +Inf\nvllm:num_requests_waiting nope\nvllm:num_requests_waiting 2\n"
        'other_metric{a="b"} 9\n'
    )
    assert engine_metrics.parse(text).waiting == 2.0


def test_lora_requests_info_gives_the_newest_samples_adapters():
    """vLLM keeps a label set it used before, at its older time: the newest sample is now."""
    text = (
        "# TYPE vllm:lora_requests_info gauge\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old/a",waiting_lora_adapters=""} 1.7e9\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="acme/x,acme/y",'
        'waiting_lora_adapters="beta/z"} 1.8e9\n'
        'vllm:num_requests_running{model_name="m"} 1\n'
    )
    assert engine_metrics.lora_adapters(text) == ["acme/x", "acme/y", "beta/z"]
    idle = 'vllm:lora_requests_info{max_lora="1",running_lora_adapters="",waiting_lora_adapters=""} 1.9e9\n'
    assert engine_metrics.lora_adapters(text + idle) == []
    assert engine_metrics.lora_adapters("vllm:num_requests_running 3\n") == []
    assert engine_metrics.parse(text).running == 1.0  # the load gauges are unaffected
