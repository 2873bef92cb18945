"""Subscription trie: the cost of matching a topic follows its length, not the number
of subscriptions. Results are cached per topic (bounded LRU) until the trie changes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

from macula.pubsub.topics import validate_pattern, validate_topic

V = TypeVar("V", bound=Hashable)


class _Node:
    __slots__ = ("children", "star", "exact", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.exact: set = set()   # subscriptions whose pattern ends here
        self.rest: set = set()    # subscriptions with '>' after this node


class SubscriptionTrie(Generic[V]):
    def __init__(self, cache_entries: int = 4096) -> None:
        self._root = _Node()
        self._patterns: dict[V, list[str]] = {}
        self._cache: OrderedDict[str, frozenset] = OrderedDict()
        self._cache_entries = cache_entries
        self.nodes_visited = 0  # trie nodes examined on cache misses (cost accounting)

    def __len__(self) -> int:
        return len(self._patterns)

    def __contains__(self, value: object) -> bool:
        return value in self._patterns

    def add(self, pattern: str, value: V) -> None:
        """Subscribe ``value`` (any hashable, unique per subscription) to ``pattern``."""
        tokens = validate_pattern(pattern)
        if value in self._patterns:
            raise ValueError(f"{value!r} is already subscribed")
        node = self._root
        for tok in tokens:
            if tok == ">":
                node.rest.add(value)
                break
            if tok == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(tok)
                if child is None:
                    child = node.children[tok] = _Node()
                node = child
        else:
            node.exact.add(value)
        self._patterns[value] = tokens
        self._cache.clear()

    def remove(self, value: V) -> bool:
        tokens = self._patterns.pop(value, None)
        if tokens is None:
            return False
        path: list[tuple[_Node, str]] = []
        node = self._root
        for tok in tokens:
            if tok == ">":
                node.rest.discard(value)
                break
            path.append((node, tok))
            node = node.star if tok == "*" else node.children[tok]  # type: ignore[assignment]
        else:
            node.exact.discard(value)
        for parent, tok in reversed(path):  # prune empty branches so memory follows subs
            child = parent.star if tok == "*" else parent.children[tok]
            if child.exact or child.rest or child.children or child.star:  # type: ignore[union-attr]
                break
            if tok == "*":
                parent.star = None
            else:
                del parent.children[tok]
        self._cache.clear()
        return True

    def pattern_of(self, value: V) -> str | None:
        tokens = self._patterns.get(value)
        return None if tokens is None else ".".join(tokens)

    def match(self, topic: str) -> frozenset:
        """Every subscription whose pattern matches ``topic`` (a valid topic)."""
        hit = self._cache.get(topic)
        if hit is not None:
            self._cache.move_to_end(topic)
            return hit
        result = frozenset(self._walk(validate_topic(topic)))
        self._cache[topic] = result
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return result

    def _walk(self, tokens: list[str]) -> set:
        found: set = set()
        level = [self._root]
        last = len(tokens) - 1
        for i, tok in enumerate(tokens):
            nxt = []
            self.nodes_visited += len(level)
            for node in level:
                if node.rest:
                    found |= node.rest  # '>' needs at least one more token: this one
                child = node.children.get(tok)
                if child is not None:
                    nxt.append(child)
                if node.star is not None:
                    nxt.append(node.star)
            if not nxt:
                return found
            level = nxt
            if i == last:
                for node in level:
                    found |= node.exact
        return found
