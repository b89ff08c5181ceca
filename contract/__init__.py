"""The contract between Berth's processes: every fact that crosses Redis, defined once.

The gateway (no Django) and the control plane (Django apps, Celery, the usage consumer) talk only
through Redis. Both import this package, which imports nothing of either, so a name, a message or
an encoding cannot drift apart on the two sides:

* ``contract.redis_names`` — one builder per Redis key, channel and stream (``RedisNames``);
* ``contract.invalidation`` — the messages on the ``invalidate`` channel and their one parser;
* ``contract.usage`` — the usage event (``UsageEvent``) and its wire encoding;
* ``contract.api_keys`` — the key format, its parser, the HMAC, and pepper parsing;
* ``contract.spend`` — money in micro-units, billing periods, a request's cost;
* ``contract.engine_metrics`` — the parser for the engines' Prometheus load gauges.

The Redis layout
================

Every name starts with ``BERTH_REDIS_PREFIX`` (``berth:``). ``{t}`` is a tenant id inside a Redis
Cluster hash tag, so one request's quota keys share a slot. "Writer → reader" names the processes.

Mirrors of PostgreSQL (control plane → gateway; rewritten after each commit, healed by resyncs):

* ``apikey:<lookup id>`` — hash: ``hash`` (HMAC-SHA256 hex), ``pepper`` (pepper id), ``key_id``,
  ``tenant_id``, ``name``, ``allowed_models`` (JSON list; empty = all), ``expires_at`` (epoch s or
  empty). Only usable inference keys are present; an expiring key also gets ``EXPIREAT``.
  Written by ``tenants.mirror``, read by ``gateway.auth``.
* ``tenant:<tenant id>`` — hash: ``slug``, ``status`` (``active`` admits requests), ``plan`` (JSON
  of the plan's limits: ``rpm``, ``tpm``, ``concurrency``, ``monthly_tokens``; null = unlimited),
  ``spend_limit_micros`` (empty: no limit), ``rev`` (a fresh token per write, for the resync's
  compare-and-set). Written by ``tenants.mirror``, read by ``gateway.auth``.
* ``model:<public name>`` — hash: ``served_name``, ``task`` (``chat`` | ``completion`` |
  ``embedding``), ``visibility`` (``public`` | ``private``), ``tenants`` (JSON list of tenant ids
  allowed a private model), ``created`` (epoch s), ``owned_by``, ``context_length`` (tokens, or
  empty), ``manifest_digest`` (``sha256:<hex>`` of the weights' manifest, or empty: see
  ``integrity``), and with a price in effect ``price_input_micros`` / ``price_output_micros`` /
  ``price_cached_input_micros`` (per million tokens; cached input is the part of a prompt the
  engine served from its prefix cache, see ``contract.spend``) with ``price_percent_flex`` /
  ``price_percent_priority`` / ``price_percent_batch`` (the percent of those prices billed per
  service tier, decimal strings; absent: ``contract.tiers.DEFAULT_PRICE_PERCENT``). A model without this hash does not exist for the gateway. Written by
  ``models_registry.mirror``, read by ``gateway.routing``.
  A ready LoRA adapter is mirrored the same way under its served name ``<tenant slug>/<name>``
  (``owned_by`` its tenant's slug, ``task``/``context_length`` its base's, its own price) plus
  ``parent`` (the base model's name), ``adapter_id`` (uuid), ``adapter_source`` (what an engine
  loads: an absolute folder or a Hub repo id), ``adapter_revision`` (may be empty),
  ``adapter_rank`` and ``adapter_manifest`` (the canonical JSON of the manifest recorded when it
  became ready, whose digest is its ``manifest_digest``; empty without one: the gateway hands it to
  a CPU engine's load call, which verifies the folder against it). A plain model's hash has no
  ``parent``.
  Also ``tool_call_parser``: the vLLM tool-call parser its workers run (empty: none, so
  ``tool_choice: "auto"`` is refused by the engine); informational, the gateway passes ``tools``
  through either way.
* ``models`` — set of every mirrored model name (``GET /v1/models``).
* ``route:<public name>`` — hash, one field per READY worker: worker id → JSON ``{"worker_id",
  "url", "api_key", "node", "deployment_id", "model", "engine"}`` (the gateway reads ``url``,
  ``api_key`` and ``engine``: ``vllm`` | ``cpu``, which says whether a load call may carry the
  adapter's manifest). A model with no ready worker has no hash. Written by ``provisioning.routing``.
* ``routes`` — set of model names that have a ``route:`` hash.
* ``guardrails:<tenant id>`` — hash: ``policies`` (JSON list of the guardrail policies in force
  for the tenant: its own, or the platform defaults when it has no tenant-wide one; each with
  ``id``, ``name``, ``key_id`` (null: every key), ``prompts``, ``completions``, ``detectors``
  (detector → ``redact`` | ``block`` | ``flag``), ``blocked_terms``, ``blocked_terms_action``,
  ``max_prompt_chars``, ``max_prompt_tokens``, ``max_prompt_action`` and ``screen`` (null or
  ``model``, ``examples``, ``threshold``, ``action``, ``timeout_ms``, ``fail_open``)) and
  ``log_content`` (``1`` | ``0``). No hash: nothing to apply. Written by ``guardrails.mirror``,
  read by ``gateway.guardrails``.
* channel ``invalidate`` — after every mirror write: ``apikey:<lookup id>``, ``tenant:<id>``,
  ``model:<name>``, ``route:<name>``, ``guardrails:<tenant id>`` (``contract.invalidation``).
  Gateways drop their ≤1 s cached copy at once.

Written by the gateway:

* ``engine_load`` — hash worker id → JSON ``{"waiting", "running", "kv", "at"}`` (engine gauges,
  ``at`` in epoch s), scraped about once a second by the one gateway holding
  ``lock:engine_scraper`` (``SET NX PX``); read by every gateway, by ``provisioning.autoscaler`` and
  by ``economics.sampler`` (busy/idle serving time, once a minute).
* ``lora:<worker id>`` — hash: adapter served name → JSON ``{"parent": <base model>, "at": epoch
  ms}``, one field per LoRA adapter a gateway loaded on that worker (``POST
  /v1/load_lora_adapter``); removed when the engine answers 404 for it (it evicted it) or when the
  adapter is deleted (the gateway whose ``HDEL`` removed it sends the unload). ``PEXPIRE`` one day
  after the last load. Written and read by ``gateway.adapters`` (LoRA affinity), read by the staff
  dashboard. The ``engine_load`` entry of a worker adds ``loras`` (list) when its engine reports
  adapters running or waiting in ``vllm:lora_requests_info``.
* ``demand:<public name>`` — epoch s of the last request that found no ready worker (``EX 60``);
  read by ``provisioning.autoscaler`` to scale a model up from zero.
* ``usage`` — stream, one entry per admitted request, field ``e`` = the usage event
  (``contract.usage``; ``ct``, absent when 0, is the prompt's cached tokens); consumer group ``billing`` (``billing.usage``) moves it to PostgreSQL.
  ``usage:dead`` — stream of events PostgreSQL refused (kept, never dropped).
* ``usage_ckpt`` — hash request id → the usage event of a long stream as delivered so far;
  ``usage_ckpt_due`` — sorted set request id → epoch ms after which that checkpoint counts as
  abandoned (pushed forward by the live gateway's heartbeat). ``billing.checkpoints`` moves an
  abandoned one into ``usage``; the final event removes it in the same script.
* ``audit:events`` — stream of security events seen by the gateway (guardrail flags and blocks),
  field ``e`` = JSON ``{"id": uuid, "ts_ms", "action" ("guardrail.flag" | "guardrail.block"),
  "tenant_id", "key_id", "request_id", "summary", "detail": {"policy_id", "policy", "rule",
  "direction", "matches", "model", "endpoint"}}`` — never the content itself; consumer group
  ``audit`` (``audit.gateway_events``) records each in the audit trail once, by ``id``. Capped (``MAXLEN ~`` one million).
* ``content_log`` — stream, one entry per request of a tenant whose guardrails say
  ``log_content``: field ``e`` = JSON ``{"request_id", "ts_ms", "tenant_id", "key_id", "model",
  "endpoint", "status", "http_status", "prompt", "completion"}`` (texts after redaction, each
  capped at 64 KiB); ``guardrails.content`` stores it in ``ContentLog`` and deletes the entries.
* ``key_last_used`` — hash key id → epoch s, flushed every few seconds; a Celery task claims it
  (renamed to ``key_last_used:flushing:<token>``) and writes ``ApiKey.last_used_at``.
* ``response:<response id>`` — hash ``tenant_id``, ``key_id``, ``model`` (public name),
  ``worker_id`` for each ``/v1/responses`` answer (``gateway.responses``), expiring after
  ``BERTH_GATEWAY_RESPONSE_TTL_SECONDS``: retrieve, cancel and ``previous_response_id`` go to the
  worker that stored the response, and only for the tenant that created it.
* Quotas, taken and settled in one Lua script each (``gateway.quotas``):
  ``q:{t}:t:rpm:<epoch minute>``, ``q:{t}:t:tpm:<epoch minute>`` (counters, expire after 2 min),
  ``q:{t}:t:conc`` (sorted set request id → lease expiry ms), ``q:{t}:t:tokens:<YYYYMM>``.
* ``q:{t}:batch:tokens:<YYYYMM>`` — tokens of the tenant's batch lines this month (reserved at
  admission, settled to the engine's count), checked against the plan's ``batch_tokens``; batch
  lines touch no rpm, tpm, concurrency or monthly-token key (their own Lua script pair).
* ``q:{t}:spend:<period id>`` — the tenant's spend this billing period in micro-units: the
  gateway adds each settled request's cost, billing's periodic check raises it (never lowers it)
  to what PostgreSQL says (``contract.spend``).

* The admission queue (``gateway.admission``; ``{m}`` is the model whose workers serve the
  request — an adapter's base — in a Redis Cluster hash tag), one Lua script per step (acquire,
  release, poll, cancel, heartbeat), every key ``PEXPIRE``d an hour after the last step:
  ``adm:{m}:slots`` — hash gateway instance → admission slots it holds (their sum never exceeds the
  model's capacity, plus the priority headroom for priority requests); ``adm:{m}:alive`` — sorted
  set gateway instance → heartbeat expiry ms (a gateway past it is dead: any step drops its slots
  and entries); ``adm:{m}:e`` — hash entry id → ``<gateway>|<band 1-4>|<tenant id>|<token
  cost>|<enqueued ms>`` for each waiting request; ``adm:{m}:q:<tier>`` — sorted set per tier
  (``priority``, ``default``, ``flex``, ``batch``) entry id → start tag of start-time fair
  queuing; ``adm:{m}:vt`` — hash ``V:<band>`` (the band's virtual time) and ``F:<band>:<tenant>``
  (the tenant's last finish tag); ``adm:{m}:exp`` — sorted set entry id → deadline ms;
  ``adm:{m}:granted`` — sorted set entry id → grant ms (a waiter that missed the message finds its
  grant here; pruned after 2 minutes). Channel ``adm``: ``g <gateway> <model> <entry>`` (a grant)
  and ``q <gateway> <model>`` (someone waits: other gateways give back the slots they hold idle).
  Written by the gateways, read by them and by the staff dashboard's Queues page
  (``staff.queues``).

Written by billing: ``q:{t}:spend_blocked`` — while present, the gateway refuses the tenant with
``insufficient_quota`` (the spend check sets it at 100 % of the limit until the period ends).
"""
