"""SWIM failure detection and membership with Lifeguard's refinements (sans-IO).

Each probe period this node pings one member (round-robin over a shuffled list). No
ack within the probe timeout: ``indirect_checks`` other members are asked to ping it
(ping-req) and relay the ack. No ack by the end of the period: the member becomes
suspect. A suspect that does not refute (by raising its incarnation) before the
suspicion timeout is declared dead. News rides on every ping and ack.

Lifeguard (Dadgar et al., 2018):
- local health: a score, raised by failed probes, missing nacks and having to refute,
  lowered by successful probes, multiplies the probe interval and timeout, so a node
  that is itself slow (CPU, network) probes less eagerly and accuses less often;
- nacks: a relay that gets no answer says so, which tells the requester that its own
  links work (a missing nack counts against its health);
- dynamic suspicion: the timeout starts long (suspicion_max_mult * min) and shrinks as
  other members independently suspect the same node; min = suspicion_mult * log10(n) *
  probe_interval, so it grows with the time news needs to spread.

Dead and left members stay in the table for ``dead_retention`` seconds, so their news
keeps spreading and stale "alive" news cannot bring them back, then they are forgotten.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from macula.errors import ErrorCode, ProtocolError, StateError
from macula.membership.dissemination import Broadcasts, Suspicion, Update, retransmit_limit
from macula.membership.events import (
    MemberEvent, MemberFailed, MemberJoined, MemberLeft, MemberRecovered, MemberSuspected,
    SwimStats,
)
from macula.wire.messages import SWIM_MAX_UPDATES, SwimAck, SwimPing, SwimPingReq

Addr = Any  # (host, port) or None


class State(IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


ACTIVE = (State.ALIVE, State.SUSPECT)
NACK_FRACTION = 0.8
JOIN_ATTEMPTS = 8       # sync pings to a new contact, one per probe period, until it answers
MAX_JOINING = 16        # contacts being joined through at once
STRANGER_PERIODS = 5    # probe periods a non-member may talk to us before we ask its table
MAX_STRANGERS = 64
_STATES = tuple(State)


@dataclass(slots=True)
class Member:
    node_id: bytes
    state: State
    incarnation: int
    addr: Addr
    since: float            # when it entered this state

    def update(self, suspected_by: bytes | None = None) -> Update:
        return self.node_id, int(self.state), self.incarnation, self.addr, suspected_by


@dataclass(slots=True)
class _Probe:
    target: bytes
    seq: int
    timeout_at: float
    acked: bool = False
    indirect: int = 0       # ping-reqs sent (= nacks expected)
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: bytes
    seq: int                # the requester's
    deadline: float


class SwimCore:
    def __init__(self, node_id: bytes, addr: Addr, rng: random.Random, *,
                 probe_interval: float = 1.0, probe_timeout: float = 0.5, indirect_checks: int = 3,
                 suspicion_mult: int = 4, suspicion_max_mult: int = 6, awareness_max: int = 8,
                 retransmit_mult: int = 4, max_piggyback: int = 16, max_members: int = 1024,
                 max_broadcasts: int = 256, max_relays: int = 64, dead_retention: float = 30.0,
                 sync_interval: float = 30.0, max_events: int = 1024) -> None:
        if not 0 < probe_timeout < probe_interval:
            raise StateError("need 0 < probe_timeout < probe_interval")
        if not 1 <= max_piggyback <= SWIM_MAX_UPDATES:
            raise StateError(f"max_piggyback must be in 1..{SWIM_MAX_UPDATES}")
        if suspicion_mult < 1 or suspicion_max_mult < 1 or awareness_max < 1 or indirect_checks < 0:
            raise StateError("multipliers must be >= 1, indirect_checks >= 0")
        self.node_id = node_id
        self.addr = addr
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.indirect_checks = indirect_checks
        self.suspicion_mult = suspicion_mult
        self.suspicion_max_mult = suspicion_max_mult
        self.awareness_max = awareness_max
        self.retransmit_mult = retransmit_mult
        self.max_piggyback = max_piggyback
        self.max_members = max_members
        self.max_relays = max_relays
        self.dead_retention = dead_retention
        self.sync_interval = sync_interval
        self.stats = SwimStats()
        self.incarnation = 0
        self._rng = rng
        self._members: dict[bytes, Member] = {}
        self._active = 0                          # members alive or suspect (not this node)
        self._tombstones: dict[bytes, float] = {}  # dead or left -> since, in that order
        self._broadcasts = Broadcasts(max_broadcasts)
        self._suspicions: dict[bytes, Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._joining: dict[bytes, int] = {}    # contact -> sync pings left to send
        self._strangers: dict[bytes, float] = {}   # non-members that talked to us -> since
        self._told_dead: set[bytes] = set()        # told of their death this probe period
        self._stranger_budget = True               # one table asked of them per probe period
        self._probe: _Probe | None = None
        self._order: list[bytes] = []
        self._awareness = 0
        self._leaving = False
        self._seq = 0
        self._out: list[tuple[bytes, Any]] = []
        self._events: deque[MemberEvent] = deque()
        self._max_events = max_events
        self._next_probe: float | None = None
        self._next_sync = 0.0
        self._broadcasts.add(self._self_update())

    # ---- views ------------------------------------------------------------------------
    @property
    def health(self) -> int:
        """Lifeguard's local health score: 0 is healthy; timeouts scale by health + 1."""
        return self._awareness

    def members(self) -> dict[bytes, Addr]:
        """Members believed alive (suspects included), without this node."""
        return {m.node_id: m.addr for m in self._members.values() if m.state in ACTIVE}

    def table(self) -> dict[bytes, State]:
        """Every member held, failed and departed ones included while their tombstones
        last (without this node)."""
        return {m.node_id: m.state for m in self._members.values()}

    def state_of(self, node_id: bytes) -> State | None:
        m = self._members.get(node_id)
        return None if m is None else m.state

    def address(self, node_id: bytes) -> Addr:
        """Where a member said it accepts sessions (for the edge to dial)."""
        m = self._members.get(node_id)
        return None if m is None else m.addr

    # ---- the core shape ---------------------------------------------------------------
    def peer_connected(self, node_id: bytes, addr: Addr, now: float) -> None:
        """A session came up (a seed, or a member dialled us): sync tables unless it is
        a member we already consider alive. The sync is repeated each probe period
        until the node is a live member (a lost message must not strand a joiner)."""
        self._start(now)
        m = self._members.get(node_id)
        if m is None or m.state not in ACTIVE:
            self._send(node_id, SwimPing(self._next_seq(), self._updates(first_self=True), sync=True))
            if node_id not in self._joining and len(self._joining) >= MAX_JOINING:
                del self._joining[next(iter(self._joining))]
            self._joining[node_id] = JOIN_ATTEMPTS - 1

    def peer_disconnected(self, node_id: bytes, now: float) -> None:
        """Sessions come and go; only probes decide whether a member is alive."""

    def leave(self, now: float) -> None:
        """Leave cleanly: tell every member now (one message each, once), so each
        removes this node at once; piggybacking covers any message that is lost."""
        self._start(now)
        self._leaving = True
        self.incarnation += 1
        goodbye = (self.node_id, int(State.LEFT), self.incarnation, self.addr, None)
        self._broadcasts.add(goodbye)
        for target in self.members():
            self._send(target, SwimPing(self._next_seq(), (goodbye,)))

    def handle_message(self, sender: bytes, msg: Any, now: float) -> None:
        self._start(now)
        try:
            if isinstance(msg, SwimPing):
                self._apply_all(sender, msg.updates, now)
                self._send(sender, SwimAck(msg.seq, self._updates()))
                if msg.sync:
                    self._send_table(sender, msg.seq)
            elif isinstance(msg, SwimAck):
                self._apply_all(sender, msg.updates, now)
                self._on_ack(msg, now)
            elif isinstance(msg, SwimPingReq):
                self._apply_all(sender, msg.updates, now)
                self._on_ping_req(sender, msg, now)
            else:
                return
        except ProtocolError:
            self.stats.rejected += 1
            return
        if not (isinstance(msg, SwimPing) and msg.sync):   # a sync is answered with the table
            self.heard_from(sender, now)

    def heard_from(self, node_id: bytes, now: float) -> None:
        """``node_id`` talked to us (any protocol): if it is not a live member here, it
        learns where it stands.

        One we hold dead or departed gets that news at once (once per probe period), so
        it refutes now (after a healed partition, say) instead of when a periodic sync
        happens to tell it; if it already has, it answers with its newer incarnation. A
        stranger is asked for its table, which carries its own alive update, if it is
        still a stranger STRANGER_PERIODS probe periods after we first heard from it:
        one forgotten on both sides of a long partition has no other way back, while
        in a cluster that is forming, nearly every contact is a stranger whose news is
        on its way anyway, and a table is O(members). At most one ask per probe period.
        """
        self._start(now)
        if self._leaving or node_id == self.node_id:
            return
        m = self._members.get(node_id)
        if m is None:
            first = self._strangers.get(node_id)
            if first is None:
                self._strangers[node_id] = now
                if len(self._strangers) > MAX_STRANGERS:
                    del self._strangers[next(iter(self._strangers))]
            elif (now - first >= STRANGER_PERIODS * self.probe_interval and self._stranger_budget
                  and len(self._members) < self.max_members):
                self._stranger_budget = False
                del self._strangers[node_id]   # asked; counted afresh if it stays one
                self._send(node_id, SwimPing(self._next_seq(), self._updates(first_self=True), sync=True))
        elif m.state not in ACTIVE and node_id not in self._told_dead:
            self._told_dead.add(node_id)   # once per probe period: its answer may be an ack
            self._send(node_id, SwimPing(self._next_seq(), (m.update(),)))

    def handle_timer(self, now: float) -> None:
        self._start(now)
        for seq in [s for s, r in self._relays.items() if r.deadline <= now]:
            relay = self._relays.pop(seq)   # the target stayed silent: say so (Lifeguard nack)
            self._send(relay.requester, SwimAck(relay.seq, self._updates(), nack=True))
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect and now >= probe.timeout_at:
            self._indirect_probe(probe)
        assert self._next_probe is not None
        if now >= self._next_probe:
            self._finish_probe(now)
            if not self._leaving:
                self._start_probe(now)
                self._retry_joins()
                self._ping_the_dead()
            self._stranger_budget = True
            self._next_probe = now + self._scaled(self.probe_interval)
        for node in [n for n, s in self._suspicions.items() if s.deadline <= now]:
            self._declare_dead(node, now)
        while self._tombstones:
            node, since = next(iter(self._tombstones.items()))
            if since + self.dead_retention > now:
                break
            del self._tombstones[node], self._members[node]
        if now >= self._next_sync:
            self._next_sync = now + self.sync_interval
            if not self._leaving:
                # one live member, and one we think dead: if a partition has healed,
                # this is how the two sides find each other again
                dead = [n for n, m in self._members.items() if m.state == State.DEAD]
                targets = self._pick(1, exclude=()) + self._rng.sample(dead, min(1, len(dead)))
                for target in targets:
                    self._send(target, SwimPing(self._next_seq(), self._updates(first_self=True), sync=True))

    def get_timer(self) -> float | None:
        if self._next_probe is None:
            return None
        times = [self._next_probe, self._next_sync]
        if self._probe is not None and not self._probe.acked and not self._probe.indirect:
            times.append(self._probe.timeout_at)
        times.extend(r.deadline for r in self._relays.values())
        times.extend(s.deadline for s in self._suspicions.values())
        if self._tombstones:
            times.append(next(iter(self._tombstones.values())) + self.dead_retention)
        return min(times)

    def messages_to_send(self) -> list[tuple[bytes, Any]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> MemberEvent | None:
        return self._events.popleft() if self._events else None

    # ---- probing ----------------------------------------------------------------------
    def _start(self, now: float) -> None:
        if self._next_probe is None:   # first contact with time: spread nodes' periods apart
            self._next_probe = now + self._rng.uniform(0, self.probe_interval)
            self._next_sync = now + self._rng.uniform(0.5, 1.0) * self.sync_interval

    def _scaled(self, base: float) -> float:
        return base * (self._awareness + 1)

    def _health(self, delta: int) -> None:
        self._awareness = min(self.awareness_max - 1, max(0, self._awareness + delta))

    def _next_target(self) -> bytes | None:
        for _ in range(2):
            while self._order:
                node = self._order.pop()
                m = self._members.get(node)
                if m is not None and m.state in ACTIVE:
                    return node
            self._order = [n for n, m in self._members.items() if m.state in ACTIVE]
            self._rng.shuffle(self._order)
        return None

    def _start_probe(self, now: float) -> None:
        target = self._next_target()
        if target is None:
            self._probe = None
            return
        seq = self._next_seq()
        self._probe = _Probe(target, seq, now + self._scaled(self.probe_timeout))
        self.stats.probes += 1
        self._send(target, SwimPing(seq, self._updates(first=target)))

    def _ping_the_dead(self) -> None:
        """Tell one member we hold dead so, each probe period while its tombstone lasts
        (memberlist's gossip to the dead). If it is alive after all, it refutes at
        once: after a healed partition two members can each hold the other dead, and
        then neither probes the other."""
        self._told_dead.clear()
        dead = [n for n in self._tombstones if self._members[n].state == State.DEAD]
        if dead:
            m = self._members[self._rng.choice(dead)]
            self._told_dead.add(m.node_id)
            self._send(m.node_id, SwimPing(self._next_seq(), (m.update(),)))

    def _retry_joins(self) -> None:
        for node_id, left in list(self._joining.items()):
            m = self._members.get(node_id)
            if (m is not None and m.state in ACTIVE) or left == 0:
                del self._joining[node_id]
                continue
            self._joining[node_id] = left - 1
            self._send(node_id, SwimPing(self._next_seq(), self._updates(first_self=True), sync=True))

    def _indirect_probe(self, probe: _Probe) -> None:
        helpers = self._pick(self.indirect_checks, exclude=(probe.target,), alive_only=True)
        probe.indirect = len(helpers) or -1   # -1: none available, do not try again
        self.stats.indirect_probes += len(helpers)
        for helper in helpers:
            self._send(helper, SwimPingReq(probe.seq, probe.target, self._updates(first=probe.target)))

    def _finish_probe(self, now: float) -> None:
        probe, self._probe = self._probe, None
        if probe is None:
            return
        if probe.acked:
            self._health(-1)
            return
        m = self._members.get(probe.target)
        if m is None or m.state not in ACTIVE:
            return
        self.stats.probes_failed += 1
        missed_nacks = max(0, probe.indirect) - probe.nacks
        self._health(1 + missed_nacks)
        self._suspect(m, self.node_id, now)

    def _on_ack(self, msg: SwimAck, now: float) -> None:
        probe = self._probe
        if probe is not None and msg.seq == probe.seq:
            if msg.nack:
                probe.nacks += 1
            else:
                probe.acked = True
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None and not msg.nack:
            self._send(relay.requester, SwimAck(relay.seq, self._updates()))

    def _on_ping_req(self, sender: bytes, msg: SwimPingReq, now: float) -> None:
        if msg.target == self.node_id:
            self._send(sender, SwimAck(msg.seq, self._updates()))
            return
        if len(self._relays) >= self.max_relays:
            self.stats.relays_refused += 1
            return
        seq = self._next_seq()
        # nack before the requester's period ends (it waits interval - timeout after asking)
        self._relays[seq] = _Relay(sender, msg.seq, now + NACK_FRACTION * self.probe_timeout)
        self._send(msg.target, SwimPing(seq, self._updates(first=msg.target)))

    # ---- state changes ----------------------------------------------------------------
    def _active_count(self) -> int:
        return 1 + self._active

    def _suspect(self, m: Member, suspector: bytes, now: float) -> None:
        """Start a suspicion of ``m`` (alive), or count ``suspector``'s confirmation."""
        if m.state == State.SUSPECT:
            suspicion = self._suspicions.get(m.node_id)
            if suspicion is not None and suspicion.confirm(suspector):
                self._broadcasts.add(m.update(suspector))   # let others count it too
            return
        n = self._active_count()
        min_timeout = self.suspicion_mult * max(1.0, math.log10(n)) * self.probe_interval
        expected = min(self.indirect_checks, n - 2)
        self._suspicions[m.node_id] = Suspicion(now, suspector, min_timeout,
                                                self.suspicion_max_mult * min_timeout, expected)
        self._set_state(m, State.SUSPECT, now, MemberSuspected(m.node_id))
        self._broadcasts.add(m.update(suspector))

    def _declare_dead(self, node: bytes, now: float) -> None:
        self._suspicions.pop(node, None)
        m = self._members.get(node)
        if m is not None and m.state == State.SUSPECT:
            self._set_state(m, State.DEAD, now, MemberFailed(node))
            self._broadcasts.add(m.update())

    def _set_state(self, m: Member, state: State, now: float, event: MemberEvent | None) -> None:
        was_active = m.state in ACTIVE
        m.state, m.since = state, now
        if state in ACTIVE:
            if not was_active:
                self._active += 1
                self._tombstones.pop(m.node_id, None)
        elif was_active:
            self._active -= 1
            self._tombstones[m.node_id] = now   # deaths come in time order: stays sorted
        if state != State.SUSPECT:
            self._suspicions.pop(m.node_id, None)
        if event is not None:
            self._emit(event)

    def _apply_all(self, sender: bytes, updates: tuple, now: float) -> None:
        for node, state, incarnation, addr, suspected_by in updates:
            if state > State.LEFT:
                raise ProtocolError(f"member state {state} unknown", code=ErrorCode.BAD_FIELD)
            state = _STATES[state]   # the wire checked it is a u8; not State(state): slow
            if node == self.node_id:
                if self._refute(state, incarnation):
                    # tell the one who said so now: it may see us as dead and never ask
                    self._send(sender, SwimPing(self._next_seq(), self._updates(first=self.node_id)))
                elif state != State.ALIVE and incarnation < self.incarnation and not self._leaving:
                    # old news: we refuted it already, but the sender missed that
                    self._send(sender, SwimPing(self._next_seq(), (self._self_update(),)))
            else:
                self._apply(node, state, incarnation, addr, suspected_by, now)

    def _apply(self, node: bytes, state: State, inc: int, addr: Addr, suspected_by: bytes | None,
               now: float) -> None:
        """SWIM's precedence: for one member, a higher incarnation wins; at the same
        incarnation suspect beats alive and dead or left beat both."""
        m = self._members.get(node)
        if m is None:
            if state != State.ALIVE:
                return   # news about a stranger's death: nothing to do
            if len(self._members) >= self.max_members and not self._evict_tombstone():
                self.stats.members_refused += 1
                return
            m = self._members[node] = Member(node, State.ALIVE, inc, addr, now)
            self._active += 1
            self._emit(MemberJoined(node, addr))
            self._broadcasts.add(m.update())
            return
        if state == State.ALIVE:
            if inc > m.incarnation:
                was = m.state
                m.incarnation, m.addr = inc, addr if addr is not None else m.addr
                event = (MemberJoined(node, m.addr) if was not in ACTIVE
                         else MemberRecovered(node) if was == State.SUSPECT else None)
                self._set_state(m, State.ALIVE, now if was != State.ALIVE else m.since, event)
                self._broadcasts.add(m.update())
        elif state == State.SUSPECT:
            if m.state == State.ALIVE and inc >= m.incarnation:
                m.incarnation = inc
                self._suspect(m, suspected_by or node, now)
            elif m.state == State.SUSPECT and inc >= m.incarnation:
                m.incarnation = inc
                self._suspect(m, suspected_by or node, now)
        elif m.state in ACTIVE and inc >= m.incarnation:
            m.incarnation = inc
            event = MemberFailed(node) if state == State.DEAD else MemberLeft(node)
            self._set_state(m, state, now, event)
            self._broadcasts.add(m.update())
        elif m.state == State.DEAD and state == State.LEFT and inc >= m.incarnation:
            m.incarnation, m.state = inc, State.LEFT   # a late goodbye: no new event
            self._broadcasts.add(m.update())

    def _refute(self, state: State, inc: int) -> bool:
        """Outbid news that says this node is not alive (or is alive at a higher
        incarnation than we know, as after a restart); True if we did."""
        if self._leaving or inc < self.incarnation or (state == State.ALIVE and inc == self.incarnation):
            return False
        if state != State.ALIVE:
            self.stats.refutations += 1
            self._health(1)   # being suspected hints that we are the slow one
        self.incarnation = max(self.incarnation, inc) + 1
        self._broadcasts.add(self._self_update())
        return True

    def _evict_tombstone(self) -> bool:
        if not self._tombstones:
            return False
        oldest = next(iter(self._tombstones))
        del self._tombstones[oldest], self._members[oldest]
        return True

    # ---- messages ---------------------------------------------------------------------
    def _self_update(self) -> Update:
        return self.node_id, int(State.ALIVE), self.incarnation, self.addr, None

    def _updates(self, first: bytes | None = None, first_self: bool = False) -> tuple:
        limit = retransmit_limit(self.retransmit_mult, self._active_count())
        updates = self._broadcasts.take(self.max_piggyback, limit, first=first)
        if first_self and not any(u[0] == self.node_id for u in updates):
            updates = [self._self_update(), *updates[:self.max_piggyback - 1]]
        return tuple(updates)

    def _send_table(self, dest: bytes, seq: int) -> None:
        """Everything we know, for a member that is joining or syncing."""
        table = [self._self_update()] + [m.update() for m in self._members.values()]
        for i in range(0, len(table), SWIM_MAX_UPDATES):
            self._send(dest, SwimAck(seq, tuple(table[i:i + SWIM_MAX_UPDATES])))

    def _pick(self, k: int, exclude: tuple, alive_only: bool = False) -> list[bytes]:
        states = (State.ALIVE,) if alive_only else ACTIVE
        pool = [n for n, m in self._members.items() if m.state in states and n not in exclude]
        return self._rng.sample(pool, min(k, len(pool)))

    def _send(self, dest: bytes, msg: Any) -> None:
        self._out.append((dest, msg))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF_FFFF
        return self._seq

    def _emit(self, event: MemberEvent) -> None:
        if len(self._events) >= self._max_events:
            self._events.popleft()
            self.stats.events_dropped += 1
        self._events.append(event)
