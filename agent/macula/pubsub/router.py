"""Pub/sub routing core (sans-IO): who gets a publish.

Local subscriptions (held by attached clients) live in a trie. Remote interest (which
other nodes have matching subscriptions) is a table fed by the edge from the DHT or
from cluster gossip: per node, the patterns it serves. ``route()`` answers, for one
topic, the local subscriptions to deliver to and the remote nodes to send ONE frame
each; a node that receives a routed publish delivers locally only, so nothing is
relayed twice (the original's amplification bug cannot happen by construction).

Queue groups: among every member of a group, local or remote, one gets each message.
The publishing node chooses (uniformly over members, seeded rng) and tells the chosen
remote node which group it must serve; that node picks one of its local members.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Collection, Iterable, NamedTuple

from macula.errors import Overloaded
from macula.interest import RemotePattern
from macula.pubsub.topics import TopicError, matches, validate_pattern, validate_topic
from macula.pubsub.trie import SubscriptionTrie


@dataclass(frozen=True, slots=True)
class LocalSub:
    owner: bytes            # node ID of the client session that holds it
    sub_id: int
    group: str | None


class Plan(NamedTuple):
    local: tuple[LocalSub, ...]         # plain local subscriptions
    remote: tuple[bytes, ...]           # remote nodes with plain subscriptions
    groups: tuple[tuple[str, list[tuple]], ...]  # queue group -> candidate members


@dataclass(slots=True)
class Route:
    local: list[LocalSub] = field(default_factory=list)
    # node ID -> (deliver to its plain subscribers?, groups it must serve one member of)
    remote: dict[bytes, tuple[bool, tuple[str, ...]]] = field(default_factory=dict)


class PubSubRouter:
    def __init__(self, *, max_subscriptions: int, max_per_owner: int,
                 rng: random.Random | None = None, cache_entries: int = 4096) -> None:
        self.max_subscriptions = max_subscriptions
        self.max_per_owner = max_per_owner
        self._rng = rng or random.Random()
        self._trie: SubscriptionTrie[LocalSub] = SubscriptionTrie(cache_entries)
        self._by_owner: dict[bytes, dict[int, LocalSub]] = {}
        # remote interest: node ID -> its patterns (replaced wholesale on each update)
        self._remote: dict[bytes, tuple[RemotePattern, ...]] = {}
        self._remote_tokens: dict[bytes, list[tuple[list[str], RemotePattern]]] = {}
        self._plans: dict[tuple[str, bool], Plan] = {}
        self._cache_entries = cache_entries

    # -- local subscriptions --------------------------------------------------------
    def subscribe(self, owner: bytes, sub_id: int, pattern: str, group: str | None = None) -> LocalSub:
        validate_pattern(pattern)  # bad input is named before any bound is checked
        owned = self._by_owner.setdefault(owner, {})
        if sub_id in owned:
            raise TopicError(f"subscription id {sub_id} is already in use")
        if len(owned) >= self.max_per_owner:
            raise Overloaded(f"at most {self.max_per_owner} subscriptions per client")
        if len(self._trie) >= self.max_subscriptions:
            raise Overloaded(f"node holds its maximum of {self.max_subscriptions} subscriptions")
        sub = LocalSub(owner, sub_id, group)
        self._trie.add(pattern, sub)
        owned[sub_id] = sub
        self._plans.clear()
        return sub

    def unsubscribe(self, owner: bytes, sub_id: int) -> bool:
        owned = self._by_owner.get(owner)
        sub = owned.pop(sub_id, None) if owned else None
        if sub is None:
            return False
        self._trie.remove(sub)
        if not owned:
            del self._by_owner[owner]
        self._plans.clear()
        return True

    def drop_owner(self, owner: bytes) -> int:
        owned = self._by_owner.pop(owner, {})
        for sub in owned.values():
            self._trie.remove(sub)
        if owned:
            self._plans.clear()
        return len(owned)

    def local_patterns(self) -> list[RemotePattern]:
        """This node's interest as others should see it: pattern, group, member count."""
        counts: dict[tuple[str, str | None], int] = {}
        for owned in self._by_owner.values():
            for sub in owned.values():
                key = (self._trie.pattern_of(sub) or "", sub.group)
                counts[key] = counts.get(key, 0) + 1
        return [RemotePattern(p, g, n) for (p, g), n in sorted(counts.items(), key=str)]

    def subscription_count(self) -> int:
        return len(self._trie)

    # -- remote interest ------------------------------------------------------------
    def set_remote(self, node_id: bytes, patterns: Iterable[RemotePattern]) -> None:
        pats = tuple(patterns)
        if not pats:
            self.forget_remote(node_id)
            return
        if self._remote.get(node_id) == pats:
            return  # unchanged: keep the cached plans
        parsed = []
        for rp in pats:
            try:
                parsed.append((validate_pattern(rp.pattern), rp))
            except TopicError:
                continue  # a bad pattern from a peer is skipped, the rest still count
        self._remote[node_id] = pats
        self._remote_tokens[node_id] = parsed
        self._plans.clear()

    def forget_remote(self, node_id: bytes) -> None:
        if self._remote.pop(node_id, None) is not None:
            self._remote_tokens.pop(node_id, None)
            self._plans.clear()

    def remote_nodes(self) -> list[bytes]:
        return list(self._remote)

    # -- routing --------------------------------------------------------------------
    def plan(self, topic: str, include_remote: bool = True) -> "Plan":
        """Who wants ``topic``, cached until subscriptions or remote interest change:
        a publish to a known topic costs one dict lookup. Raises TopicError."""
        key = (topic, include_remote)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        local: list[LocalSub] = []
        groups: dict[str, list[tuple]] = {}  # group -> ("local", sub, 1) | ("remote", id, n)
        for sub in self._trie.match(topic):
            if sub.group is None:
                local.append(sub)
            else:
                groups.setdefault(sub.group, []).append(("local", sub, 1))
        remote: list[bytes] = []
        if include_remote and self._remote_tokens:
            tokens = validate_topic(topic)
            for node_id, pats in self._remote_tokens.items():
                plain = False
                for ptoks, rp in pats:
                    if not matches(ptoks, tokens):
                        continue
                    if rp.group is None:
                        plain = True
                    else:
                        groups.setdefault(rp.group, []).append(("remote", node_id, rp.members))
                if plain:
                    remote.append(node_id)
        plan = Plan(tuple(local), tuple(remote), tuple(groups.items()))
        if len(self._plans) >= self._cache_entries:
            self._plans.clear()  # bounded; refilled by the topics actually in use
        self._plans[key] = plan
        return plan

    def route(self, topic: str, *, include_remote: bool = True) -> Route:
        """Where one publish on ``topic`` goes (queue-group members picked now)."""
        plan = self.plan(topic, include_remote)
        route = Route(list(plan.local), {n: (True, ()) for n in plan.remote})
        for group, members in plan.groups:
            _serve(route, group, self._pick(members))
        return route

    def route_rest(self, topic: str, exclude: Collection[bytes],
                   settled: Collection[str]) -> Route:
        """The rest of a publish that was routed in part before the topic's remote
        interest was known (pubsub/service.py): the remote nodes outside ``exclude``
        with plain subscriptions, and one member of every group not in ``settled``,
        picked among the remote members outside ``exclude`` (among all members, local
        ones included, when there are none: better out of order than lost)."""
        plan = self.plan(topic)
        route = Route([], {n: (True, ()) for n in plan.remote if n not in exclude})
        for group, members in plan.groups:
            if group in settled:
                continue
            eligible = [m for m in members if m[0] == "remote" and m[1] not in exclude]
            _serve(route, group, self._pick(eligible or members))
        return route

    def local_for_route(self, topic: str, plain: bool, groups: tuple[str, ...]) -> list[LocalSub]:
        """On the receiving node: the local subscriptions a routed publish is for."""
        out: list[LocalSub] = []
        by_group: dict[str, list[tuple]] = {}
        for sub in self._trie.match(topic):
            if sub.group is None:
                if plain:
                    out.append(sub)
            elif sub.group in groups:
                by_group.setdefault(sub.group, []).append(("local", sub, 1))
        for members in by_group.values():
            out.append(self._pick(members)[1])
        return out

    def _pick(self, members: list[tuple]) -> tuple:
        if len(members) == 1:
            return members[0]
        total = sum(m[2] for m in members)
        r = self._rng.random() * total
        for m in members:
            r -= m[2]
            if r < 0:
                return m
        return members[-1]


def _serve(route: Route, group: str, chosen: tuple) -> None:
    """Add the chosen member of ``group`` to ``route``: a local subscription, or the group
    named in that node's PUBSUB_ROUTE."""
    if chosen[0] == "local":
        route.local.append(chosen[1])
    else:
        plain, served = route.remote.get(chosen[1], (False, ()))
        route.remote[chosen[1]] = (plain, served + (group,))
