"""The RPC core (sans-IO): provider choice, discovery, retry, failover and deadlines."""

from __future__ import annotations

import random

from macula.errors import ErrorCode
from macula.rpc.core import Discover, RpcCore
from macula.rpc.local import LocalProcedures
from macula.wire.messages import Call, Reply

ME, CLIENT, B, C = b"\x01" * 32, b"\x0a" * 32, b"\x02" * 32, b"\x03" * 32


class Providers:
    def __init__(self) -> None:
        self.known: dict[str, list[bytes]] = {}
        self.changes: list[tuple[str, bool]] = []
        self.forgotten: list[bytes] = []

    def cached(self, procedure): return self.known.get(procedure)
    def local_changed(self, procedure, served): self.changes.append((procedure, served))
    def forget(self, node_id): self.forgotten.append(node_id)
    def returned(self, node_id): self.forgotten.remove(node_id)


def make(max_pending=100):
    providers = Providers()
    core = RpcCore(ME, LocalProcedures(4), providers, max_pending=max_pending,
                   rng=random.Random(3))
    return core, providers


def drain(core):
    events = []
    while (e := core.next_event()) is not None:
        events.append(e)
    return core.messages_to_send(), events


def test_local_provider_serves_and_reply_reaches_the_caller():
    core, providers = make()
    assert core.register(CLIENT, "p") and providers.changes == [("p", True)]
    core.call("caller", 7, "p", b"a", 1000, False, False, now=0.0)
    (dest, call), = core.messages_to_send()
    assert dest == CLIENT and type(call) is Call and call.timeout_ms == 1000
    core.handle_reply(CLIENT, Reply(call.call_id, True, b"r"), now=0.1)
    assert core.messages_to_send() == [("caller", Reply(7, True, b"r"))]
    core.handle_reply(CLIENT, Reply(call.call_id, True, b"again"), now=0.2)  # late: dropped
    assert not core.messages_to_send() and len(core.table) == 0


def test_one_discovery_for_many_waiting_calls_then_no_responders_when_empty():
    core, _ = make()
    for i in range(5):
        core.call("caller", i, "q", b"", 1000, False, False, now=0.0)
    out, events = drain(core)
    assert not out and events == [Discover("q")]
    core.discovered("q", [], now=0.01)
    replies = core.messages_to_send()
    assert [(d, r.call_id, r.error_code) for d, r in replies] == \
        [("caller", i, int(ErrorCode.NO_RESPONDERS)) for i in range(5)]


def test_unreachable_provider_fails_over_and_no_responders_reply_is_retried():
    core, providers = make()
    providers.known["p"] = [B, C]
    core.call("caller", 1, "p", b"", 1000, False, False, now=0.0)
    (first, call), = core.messages_to_send()
    core.not_delivered(first, call.call_id, now=0.1)       # could not dial it
    (second, call2), = core.messages_to_send()
    assert {first, second} == {B, C} and call2.call_id == call.call_id
    core.handle_reply(second, Reply(call.call_id, False, b"", int(ErrorCode.NO_RESPONDERS)),
                      now=0.2)
    (dest, reply), = core.messages_to_send()                # nobody left to try
    assert dest == "caller" and reply.error_code == int(ErrorCode.NO_RESPONDERS)
    assert core.stats["retries"] == 1


def test_provider_down_retries_idempotent_calls_and_fails_the_others():
    core, providers = make()
    providers.known["p"] = [B, C]
    core.call("x", 1, "p", b"", 1000, True, False, now=0.0)
    core.call("y", 2, "p", b"", 1000, False, False, now=0.0)
    sent = core.messages_to_send()
    for dest, _ in sent:
        core.peer_down(dest, True, now=0.1)
        break
    gone = sent[0][0]
    out = core.messages_to_send()
    assert gone in providers.forgotten
    for dest, msg in out:
        if type(msg) is Reply:
            assert msg.error_code == int(ErrorCode.NO_RESPONDERS)  # not idempotent: failed
        else:
            assert dest != gone                                      # retried elsewhere


def test_deadline_and_bound():
    core, _ = make(max_pending=1)
    core.register(CLIENT, "p")
    core.call("a", 1, "p", b"", 200, False, False, now=0.0)
    core.call("b", 2, "p", b"", 200, False, False, now=0.0)
    out = core.messages_to_send()
    assert out[1] == ("b", Reply(2, False, b"", int(ErrorCode.CALL_OVERLOADED), out[1][1].error))
    assert 0.2 <= core.get_timer() <= 0.25
    core.handle_timer(core.get_timer())
    (dest, reply), = core.messages_to_send()
    assert dest == "a" and reply.error_code == int(ErrorCode.CALL_TIMEOUT)
    assert core.get_timer() is None


def test_call_from_another_node_uses_local_providers_only():
    core, providers = make()
    providers.known["p"] = [B]
    core.call("node-session", 1, "p", b"", 1000, False, True, now=0.0)
    (dest, reply), = core.messages_to_send()
    assert reply.error_code == int(ErrorCode.NO_RESPONDERS)  # never forwarded again


def test_client_leaving_withdraws_its_procedures():
    core, providers = make()
    core.register(CLIENT, "p")
    core.register(CLIENT, "q")
    core.peer_down(CLIENT, False, now=0.0)
    assert sorted(providers.changes[2:]) == [("p", False), ("q", False)]
    assert providers.forgotten == []
