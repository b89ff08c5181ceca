"""The admission queue's Redis script, step by step on the real Redis: band order, start-time fair
queuing on tokens by weight, priority headroom, queue bounds, dead gateways and late entries."""

from __future__ import annotations

import time

import pytest

from berth.redis import names
from gateway import admission

pytestmark = pytest.mark.django_db
MODEL = "m"


class Steps:
    def __init__(self, redis_client, capacity: int = 1, headroom: int = 0):
        self.redis = redis_client
        self.capacity = capacity
        self.headroom = headroom
        self.script = redis_client.register_script(admission.STEP)
        self.n = 0
        self.pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(names().admission_channel())

    def run(self, op: str, gateway: str, *extra, ttl_ms: int = 60_000) -> list[int]:
        n = names()
        keys = [
            n.admission_slots(MODEL),
            n.admission_alive(MODEL),
            n.admission_entries(MODEL),
            n.admission_granted(MODEL),
            n.admission_virtual_time(MODEL),
            n.admission_deadlines(MODEL),
            *(n.admission_queue(MODEL, tier) for tier in admission.BANDS),
        ]
        now = int(time.time() * 1000)
        args = [
            op,
            gateway,
            now,
            self.capacity,
            now + ttl_ms,
            n.admission_channel(),
            MODEL,
            self.headroom,
            *extra,
        ]
        return [int(x) for x in self.script(keys=keys, args=args)]

    def enqueue(self, gateway: str, tier: str, tenant: str, *, cost=100, weight=1, wait_ms=60_000, qmax=100):
        self.n += 1
        entry = f"{gateway}:{self.n}"
        band = admission.BANDS.index(tier) + 1
        deadline = int(time.time() * 1000) + wait_ms
        result = self.run("acquire", gateway, entry, band, tenant, cost, weight, deadline, qmax)
        return entry, result[0]

    def grants(self) -> list[str]:
        out = []
        while (message := self.pubsub.get_message(timeout=0.05)) is not None:
            kind, *rest = message["data"].split(" ")
            if kind == "g":
                out.append(rest[2])
        return out


def test_a_freed_slot_goes_to_the_highest_band_first(redis_client):
    steps = Steps(redis_client)
    assert steps.enqueue("gw1", "default", "t")[1] == 1  # room: taken at once
    flex, _ = steps.enqueue("gw1", "flex", "t")
    batch, _ = steps.enqueue("gw2", "batch", "t")
    default, _ = steps.enqueue("gw2", "default", "t")
    priority, _ = steps.enqueue("gw1", "priority", "t")
    steps.grants()
    order = []
    for _ in range(4):
        steps.run("release", "gw1" if not order else order[-1].split(":")[0], 1)
        order += steps.grants()
    assert order == [priority, default, flex, batch]


def test_tenants_of_one_band_share_tokens_by_weight(redis_client):
    steps = Steps(redis_client)
    steps.enqueue("gw", "default", "blocker")
    entries = {}
    for _ in range(40):  # the light tenant queues all of its requests first
        entries[steps.enqueue("gw", "default", "light", cost=100, weight=1)[0]] = "light"
    for _ in range(40):
        entries[steps.enqueue("gw", "default", "heavy", cost=100, weight=3)[0]] = "heavy"
    steps.grants()
    served = []
    for _ in range(40):
        steps.run("release", "gw", 1)
        served += [entries[e] for e in steps.grants()]
    assert served.count("heavy") == 30 and served.count("light") == 10


def test_tokens_not_requests_are_shared(redis_client):
    steps = Steps(redis_client)
    steps.enqueue("gw", "default", "blocker")
    entries = {}
    for _ in range(30):
        entries[steps.enqueue("gw", "default", "big", cost=1000)[0]] = ("big", 1000)
        entries[steps.enqueue("gw", "default", "small", cost=100)[0]] = ("small", 100)
    steps.grants()
    tokens = {"big": 0, "small": 0}
    for _ in range(22):
        steps.run("release", "gw", 1)
        for entry in steps.grants():
            who, cost = entries[entry]
            tokens[who] += cost
    assert tokens["small"] >= 1500  # many small requests for each big one
    assert 0.5 <= tokens["small"] / tokens["big"] <= 2


def test_priority_headroom_is_for_the_priority_band_only(redis_client):
    steps = Steps(redis_client, capacity=2, headroom=1)
    assert steps.enqueue("gw", "default", "t")[1] == 1
    assert steps.enqueue("gw", "default", "t")[1] == 1
    assert steps.enqueue("gw", "flex", "t")[1] == 0  # the capacity is used
    assert steps.enqueue("gw", "priority", "t")[1] == 1  # the headroom takes it at once
    assert steps.enqueue("gw", "priority", "t")[1] == 0  # headroom used too
    assert redis_client.hget(names().admission_slots(MODEL), "gw") == "3"


def test_a_full_band_refuses_and_a_cancelled_entry_frees_nothing(redis_client):
    steps = Steps(redis_client)
    steps.enqueue("gw", "default", "t")
    first, outcome = steps.enqueue("gw", "flex", "t", qmax=2)
    assert outcome == 0
    assert steps.enqueue("gw", "flex", "t", qmax=2)[1] == 0
    assert steps.enqueue("gw", "flex", "t", qmax=2)[1] == -1  # the band holds 2
    assert steps.enqueue("gw", "default", "t", qmax=2)[1] == 0  # another band has room
    assert steps.run("cancel", "gw", first)[0] == 0  # left the queue, was never granted
    assert redis_client.hget(names().admission_slots(MODEL), "gw") == "1"
    assert redis_client.hlen(names().admission_entries(MODEL)) == 2


def test_a_dead_gateways_slots_and_entries_are_dropped(redis_client):
    steps = Steps(redis_client, capacity=2)
    steps.run("beat", "dead", ttl_ms=200)
    steps.enqueue("dead", "default", "t")
    steps.enqueue("dead", "default", "t")
    steps.enqueue("dead", "default", "t")  # waits
    steps.run("beat", "dead", ttl_ms=200)
    assert redis_client.hlen(names().admission_entries(MODEL)) == 1
    time.sleep(0.3)
    mine, outcome = steps.enqueue("live", "default", "t")
    assert outcome == 1  # the dead gateway's slots and its waiting entry are gone
    assert redis_client.hgetall(names().admission_slots(MODEL)) == {"live": "1"}
    assert redis_client.hlen(names().admission_entries(MODEL)) == 0


def test_an_entry_past_its_deadline_leaves_the_queue(redis_client):
    steps = Steps(redis_client)
    steps.enqueue("gw", "default", "t")
    late, _ = steps.enqueue("gw", "default", "t", wait_ms=100)
    time.sleep(0.2)
    assert steps.run("poll", "gw", late)[0] == -2  # gone: neither waiting nor granted
    assert redis_client.hlen(names().admission_entries(MODEL)) == 0


def test_batch_lines_leave_the_reserve_free_for_interactive_requests(redis_client):
    steps = Steps(redis_client, capacity=4, headroom="0:2")  # batch may hold at most 4 - 2 slots
    assert steps.enqueue("gw", "batch", "t")[1] == 1
    assert steps.enqueue("gw", "batch", "t")[1] == 1
    waiting_batch, granted = steps.enqueue("gw", "batch", "t")
    assert granted == 0  # 2 of 4 in use: the rest is the reserve
    assert steps.enqueue("gw", "default", "t")[1] == 1  # interactive requests use the reserve
    assert steps.enqueue("gw", "flex", "t")[1] == 1
    for in_use in (3, 2):  # not below 4 - 2 yet
        steps.run("release", "gw", 1)
        assert waiting_batch not in steps.grants(), in_use
    steps.run("release", "gw", 1)  # 1 in use
    assert waiting_batch in steps.grants()


def test_without_a_reserve_batch_lines_fill_the_capacity(redis_client):
    steps = Steps(redis_client, capacity=2, headroom=0)  # an older gateway's plain headroom argument
    assert steps.enqueue("gw", "batch", "t")[1] == 1
    assert steps.enqueue("gw", "batch", "t")[1] == 1
    assert steps.enqueue("gw", "batch", "t")[1] == 0
