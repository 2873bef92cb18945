"""Cluster state on CRDTs: what each member publishes, and the views built from it (pure).

Three replicated maps of its own, gossiped under these names:

- ``nodes``: OR-Map node ID (hex) -> LWW register holding the node's metadata
  ``{"name", "hw", "version", "load"}``;
- ``procedures``: OR-Map procedure -> OR-Set of the node IDs that serve it;
- ``subscriptions``: OR-Map pattern -> OR-Set of elements ``node ID + msgpack([group,
  members])``: who subscribes, in which queue group, with how many local members.

A node writes only its own entries: it says what it wants published (``want_*``) and
``fix(name)`` returns the mutator that makes the replica say exactly that. Running
it again after every merge is what repairs the node's entries when others removed them
(a false failure, the far side of a partition) or when a previous boot left some behind.
The one exception is cleanup: ``removal(name, owner)`` deletes a departed member's
entries so the state does not grow with every node that ever joined.

Features register maps of their own (``register_map``: the app registry, the
controller's desired state): OR-Map key -> OR-Set of elements ``node ID + payload``, so
each entry has an owner. A node says what it publishes in one (``want_entries``), reads
the live members' entries (``entries``), and gets the same repair, republishing, cap
and cleanup as the built-in maps.

Views (who serves a procedure, who subscribes to what) only count live members, so a
member leaves every view the moment the failure detector says it failed, long before
its entries are deleted. Entries come from peers: anything malformed is skipped and
counted, never raised, and each owner counts for at most ``max_entries_per_node``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import msgpack

from macula.crdt import HLC, LWWRegister, ORMap, ORSet
from macula.crdt.wire import freeze_value
from macula.errors import StateError
from macula.interest import RemotePattern

NODES = "nodes"
PROCEDURES = "procedures"
SUBSCRIPTIONS = "subscriptions"
NAMES = (NODES, PROCEDURES, SUBSCRIPTIONS)
MAX_FEATURE_MAPS = 8     # maps features may register besides the three above

NODE_ID_BYTES = 32
MAX_GROUP_CHARS = 64
MAX_GROUP_MEMBERS = 0xFFFF_FFFF

Mutator = Callable[[ORMap], ORMap]
SubscriptionView = dict[bytes, tuple[RemotePattern, ...]]
ProviderView = dict[str, tuple[bytes, ...]]


def subscription_element(node_id: bytes, group: str | None, members: int) -> bytes:
    return node_id + msgpack.packb([group, members])


def parse_subscription(element: Any) -> tuple[bytes, str | None, int] | None:
    """(owner, group, members) from an element, or None when it is malformed."""
    if type(element) is not bytes or len(element) <= NODE_ID_BYTES:
        return None
    try:
        body = msgpack.unpackb(element[NODE_ID_BYTES:], use_list=False, raw=False)
    except Exception:  # msgpack raises several types on garbage
        return None
    if type(body) is not tuple or len(body) != 2:
        return None
    group, members = body
    if group is not None and (type(group) is not str or not 0 < len(group) <= MAX_GROUP_CHARS):
        return None
    if type(members) is not int or not 0 < members <= MAX_GROUP_MEMBERS:
        return None
    return element[:NODE_ID_BYTES], group, members


def _owner_of(name: str, element: Any) -> bytes | None:
    if name == PROCEDURES:
        return element if type(element) is bytes and len(element) == NODE_ID_BYTES else None
    if name == SUBSCRIPTIONS:
        parsed = parse_subscription(element)
        return None if parsed is None else parsed[0]
    # a feature's map: node ID + payload
    return element[:NODE_ID_BYTES] if type(element) is bytes and len(element) > NODE_ID_BYTES \
        else None


def _node_key(key: str) -> bytes | None:
    try:
        node_id = bytes.fromhex(key)
    except ValueError:
        return None
    return node_id if len(node_id) == NODE_ID_BYTES else None


def _joined(deltas: Iterable[ORMap]) -> ORMap:
    """One delta for a batch of edits (deltas join like any states)."""
    out = ORMap(ORSet)
    for delta in deltas:
        out.merge(delta)
    return out


class ClusterState:
    def __init__(self, node_id: bytes, replica_id: bytes, *, max_entries_per_node: int,
                 max_drift_ms: int | None = 3_600_000) -> None:
        """``replica_id`` must be fresh per boot (see GossipCore); it also stamps this
        node's metadata writes through the hybrid logical clock."""
        if len(node_id) != NODE_ID_BYTES:
            raise StateError("node IDs are 32 bytes")
        self.node_id = node_id
        self.replica_id = replica_id
        self.max_entries_per_node = max_entries_per_node
        self.hlc = HLC(replica_id, max_drift_ms)
        self.replicas: dict[str, ORMap] = {
            NODES: ORMap(LWWRegister), PROCEDURES: ORMap(ORSet), SUBSCRIPTIONS: ORMap(ORSet)}
        self._key = node_id.hex()
        self._meta: Any = None                      # as it reads after a round trip
        self._wanted_procedures: list[str] = []
        self._wanted_subscriptions: list[tuple[str, bytes]] = []
        self._procedures: frozenset[str] = frozenset()          # published (within the cap)
        self._subscriptions: dict[str, frozenset[bytes]] = {}
        self._features: dict[str, dict[str, frozenset[bytes]]] = {}   # name -> key -> own elements
        self.local_refused = 0    # own entries beyond max_entries_per_node, not published
        self.feature_refused: dict[str, int] = {}   # the same per feature map
        self.over_cap = 0         # others' entries beyond the cap in the last view built
        self.malformed = 0        # others' malformed entries in the last view built

    @property
    def names(self) -> tuple[str, ...]:
        return NAMES + tuple(self._features)

    def register_map(self, name: str) -> ORMap:
        """A feature's own replicated map (see the module docstring); its replica."""
        if name in self.replicas:
            raise StateError(f"replicated map {name!r} exists already")
        if len(self._features) >= MAX_FEATURE_MAPS:
            raise StateError(f"at most {MAX_FEATURE_MAPS} feature maps")
        replica = self.replicas[name] = ORMap(ORSet)
        self._features[name] = {}
        return replica

    # ---- what this node publishes -------------------------------------------------------
    def want_entries(self, name: str, entries: dict[str, Iterable[bytes]]) -> None:
        """This node's entries in feature map ``name``: key -> payloads (replaces the
        previous ones). At most ``max_entries_per_node`` are published; the rest are
        counted in ``local_refused``."""
        if name not in self._features:
            raise StateError(f"no feature map {name!r}")
        me, room, out, refused = self.node_id, self.max_entries_per_node, {}, 0
        for key in sorted(entries):
            elements = sorted(me + bytes(p) for p in entries[key])
            kept, room = elements[:max(0, room)], room - len(elements)
            refused += len(elements) - len(kept)
            if kept:
                out[key] = frozenset(kept)
        self._features[name] = out
        self.feature_refused[name] = refused

    def want_metadata(self, meta: dict[str, Any]) -> None:
        self._meta = freeze_value(meta, StateError)[0]

    def want_procedures(self, names: Iterable[str]) -> None:
        self._wanted_procedures = sorted(set(names))
        self._apply_cap()

    def want_subscriptions(self, patterns: Iterable[RemotePattern]) -> None:
        counts: dict[tuple[str, str | None], int] = {}
        for rp in patterns:
            counts[(rp.pattern, rp.group)] = counts.get((rp.pattern, rp.group), 0) + rp.members
        self._wanted_subscriptions = sorted(
            (pattern, subscription_element(self.node_id, group, min(n, MAX_GROUP_MEMBERS)))
            for (pattern, group), n in counts.items())
        self._apply_cap()

    def _apply_cap(self) -> None:
        """Publish at most max_entries_per_node entries: procedures first, then patterns."""
        room = self.max_entries_per_node
        procedures = self._wanted_procedures[:room]
        subscriptions = self._wanted_subscriptions[:room - len(procedures)]
        self.local_refused = (len(self._wanted_procedures) + len(self._wanted_subscriptions)
                              - len(procedures) - len(subscriptions))
        self._procedures = frozenset(procedures)
        by_pattern: dict[str, set[bytes]] = {}
        for pattern, element in subscriptions:
            by_pattern.setdefault(pattern, set()).add(element)
        self._subscriptions = {p: frozenset(e) for p, e in by_pattern.items()}

    def fix(self, name: str, wall_ms: int) -> Mutator | None:
        """A mutator bringing this node's own entries under ``name`` to what it wants,
        or None when they already are. Raises ClockSkew (metadata only) when the
        register holds a timestamp too far ahead of ``wall_ms``."""
        replica = self.replicas[name]
        rid = self.replica_id
        if name == NODES:
            if self._meta is None or replica.get(self._key) == self._meta:
                return None
            meta, clock = self._meta, self.hlc
            return lambda m: m.update(rid, self._key, lambda reg: reg.set(meta, clock, wall_ms))
        edits: list[tuple[str, str, bytes]] = []   # (op, key, element)
        if name in self._features:
            wanted = self._features[name]
            have_by_key = self._own_elements(name)
            for key in sorted(have_by_key.keys() | wanted.keys()):
                have, want = have_by_key.get(key, frozenset()), wanted.get(key, frozenset())
                edits += [("add", key, e) for e in sorted(want - have)]
                edits += [("remove", key, e) for e in sorted(have - want)]
        elif name == PROCEDURES:
            me = self.node_id
            have = {key for key in replica if me in replica.get(key)}
            edits += [("add", key, me) for key in sorted(self._procedures - have)]
            edits += [("remove", key, me) for key in sorted(have - self._procedures)]
        else:
            have_by_key = self._own_subscriptions()
            for key in sorted(have_by_key.keys() | self._subscriptions.keys()):
                have = have_by_key.get(key, frozenset())
                want = self._subscriptions.get(key, frozenset())
                edits += [("add", key, e) for e in sorted(want - have)]
                edits += [("remove", key, e) for e in sorted(have - want)]
        return self._set_edits(edits) if edits else None

    def republish(self, name: str, wall_ms: int) -> Mutator | None:
        """A mutator writing this node's entries under ``name`` again, unchanged but
        under fresh dots: a delta carrying all of them, for peers that never got them
        (they were written while this node had no one to send them to)."""
        rid, me = self.replica_id, self.node_id
        if name == NODES:
            if self._meta is None:
                return None
            meta, clock = self._meta, self.hlc
            return lambda m: m.update(rid, self._key, lambda reg: reg.set(meta, clock, wall_ms))
        if name in self._features:
            own = self._features[name]
            edits = [("add", key, e) for key in sorted(own) for e in sorted(own[key])]
        elif name == PROCEDURES:
            edits = [("add", key, me) for key in sorted(self._procedures)]
        else:
            edits = [("add", key, e) for key in sorted(self._subscriptions)
                     for e in sorted(self._subscriptions[key])]
        return self._set_edits(edits) if edits else None

    def _own_subscriptions(self) -> dict[str, frozenset[bytes]]:
        return self._own_elements(SUBSCRIPTIONS)

    def _own_elements(self, name: str) -> dict[str, frozenset[bytes]]:
        me, replica = self.node_id, self.replicas[name]
        out = {}
        for key in replica:
            mine = frozenset(e for e in replica.get(key) if type(e) is bytes and e[:NODE_ID_BYTES] == me
                             and len(e) > NODE_ID_BYTES)
            if mine:
                out[key] = mine
        return out

    def _set_edits(self, edits: list[tuple[str, str, bytes]]) -> Mutator:
        rid = self.replica_id

        def edit(m: ORMap, op: str, key: str, element: bytes) -> ORMap:
            if op == "add":
                return m.update(rid, key, lambda s: s.add(rid, element))
            return m.update(rid, key, lambda s: s.remove(element))

        return lambda m: _joined(edit(m, *e) for e in edits)

    # ---- cleanup of departed members ----------------------------------------------------
    def owners(self) -> set[bytes]:
        """Every node with entries in the state (this one included)."""
        out = {n for n in map(_node_key, self.replicas[NODES]) if n is not None}
        for name in (PROCEDURES, SUBSCRIPTIONS, *self._features):
            replica = self.replicas[name]
            for key in replica:
                out.update(o for o in map(lambda e: _owner_of(name, e), replica.get(key))
                           if o is not None)
        return out

    def removal(self, name: str, owner: bytes) -> Mutator | None:
        """A mutator deleting every entry of ``owner`` under ``name`` (None if it has
        none). Never this node's own: it keeps those right itself."""
        if owner == self.node_id:
            return None
        replica = self.replicas[name]
        if name == NODES:
            key = owner.hex()
            return (lambda m: m.remove(key)) if key in replica else None
        edits = [("remove", key, e) for key in sorted(replica) for e in sorted(replica.get(key))
                 if _owner_of(name, e) == owner]
        return self._set_edits(edits) if edits else None

    # ---- views ------------------------------------------------------------------------
    def entries(self, name: str, live: set[bytes]) -> dict[bytes, dict[str, tuple[bytes, ...]]]:
        """Feature map ``name`` as live members other than this node publish it:
        owner -> key -> payloads, each owner counting for at most max_entries_per_node."""
        me, cap = self.node_id, self.max_entries_per_node
        replica = self.replicas[name]
        out: dict[bytes, dict[str, list[bytes]]] = {}
        used: dict[bytes, int] = {}
        for key in sorted(replica):
            for e in sorted(replica.get(key), key=_sort_key):
                owner = _owner_of(name, e)
                if owner is None or owner == me or owner not in live:
                    continue
                if used.get(owner, 0) >= cap:
                    continue
                used[owner] = used.get(owner, 0) + 1
                out.setdefault(owner, {}).setdefault(key, []).append(e[NODE_ID_BYTES:])
        return {o: {k: tuple(v) for k, v in keys.items()} for o, keys in out.items()}

    def metadata(self, node_id: bytes) -> dict[str, Any] | None:
        value = self.replicas[NODES].get(node_id.hex())
        return dict(value) if isinstance(value, dict) else None

    def views(self, live: set[bytes]) -> tuple[SubscriptionView, ProviderView]:
        """(node -> its patterns, procedure -> providers) over ``live`` members other
        than this node; each owner counts for at most ``max_entries_per_node``."""
        me = self.node_id
        budget: dict[bytes, int] = {}
        over = malformed = 0
        cap = self.max_entries_per_node

        def take(owner: bytes) -> bool:
            nonlocal over
            used = budget.get(owner, 0)
            if used >= cap:
                over += 1
                return False
            budget[owner] = used + 1
            return True

        providers: ProviderView = {}
        replica = self.replicas[PROCEDURES]
        for key in sorted(replica):
            chosen = []
            for e in sorted(replica.get(key), key=_sort_key):
                if _owner_of(PROCEDURES, e) is None:
                    malformed += 1
                elif e in live and e != me and take(e):
                    chosen.append(e)
            if chosen:
                providers[key] = tuple(chosen)
        patterns: dict[bytes, list[RemotePattern]] = {}
        replica = self.replicas[SUBSCRIPTIONS]
        for key in sorted(replica):
            for e in sorted(replica.get(key), key=_sort_key):
                parsed = parse_subscription(e)
                if parsed is None:
                    malformed += 1
                elif parsed[0] in live and parsed[0] != me and take(parsed[0]):
                    patterns.setdefault(parsed[0], []).append(RemotePattern(key, parsed[1], parsed[2]))
        self.over_cap, self.malformed = over, malformed
        return {owner: tuple(p) for owner, p in patterns.items()}, providers


def _sort_key(element: Any) -> tuple[int, Any]:
    """Elements of one set may mix types when a peer sends garbage: order them anyway."""
    return (0, element) if type(element) is bytes else (1, repr(element))
