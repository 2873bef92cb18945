"""Topic validation and the trie matcher, checked against the naive reference matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from macula.errors import ErrorCode
from macula.pubsub import (
    SubscriptionTrie, TopicError, literal_prefix, matches, validate_pattern, validate_topic,
)

TOKENS = st.sampled_from(["a", "b", "c", "temp", "k-1", "x_y"])
topics = st.lists(TOKENS, min_size=1, max_size=5).map(".".join)


@st.composite
def patterns(draw):
    toks = draw(st.lists(st.one_of(TOKENS, st.just("*")), min_size=1, max_size=5))
    if draw(st.booleans()):
        toks.append(">") if len(toks) < 6 else None
    return ".".join(toks)


@pytest.mark.parametrize("bad,why", [
    ("", "non-empty"), ("a..b", "empty token"), (".a", "empty token"), ("a.", "empty token"),
    ("a.*", "wildcard"), ("a.>", "wildcard"), ("a b", "may only use"), ("a/b", "may only use"),
    ("x" * 257, "longer than"), (".".join(["a"] * 33), "more than 32"),
])
def test_bad_topics_are_refused_with_the_reason(bad, why):
    with pytest.raises(TopicError) as info:
        validate_topic(bad)
    assert why in info.value.message and info.value.code is ErrorCode.BAD_TOPIC


@pytest.mark.parametrize("bad,why", [
    ("a.>.b", "last token"), ("a.b*", "may only use"), ("a..*", "empty token"), ("", "non-empty"),
])
def test_bad_patterns_are_refused_with_the_reason(bad, why):
    with pytest.raises(TopicError) as info:
        validate_pattern(bad)
    assert why in info.value.message


def test_wildcard_semantics_like_nats():
    m = lambda p, t: matches(p.split("."), t.split("."))  # noqa: E731
    assert m("a.*.c", "a.b.c") and not m("a.*.c", "a.b.b.c")
    assert m("a.>", "a.b") and m("a.>", "a.b.c.d") and not m("a.>", "a")
    assert m(">", "a") and m("*", "a") and not m("*", "a.b")
    assert literal_prefix(["a", "b", "*", "c"]) == "a.b" and literal_prefix([">"]) == ""


@settings(max_examples=300, deadline=None)
@given(st.lists(patterns(), max_size=30), st.lists(topics, min_size=1, max_size=10))
def test_trie_agrees_with_the_naive_matcher(pats, tops):
    trie = SubscriptionTrie(cache_entries=4)
    for i, p in enumerate(pats):
        trie.add(p, i)
    for t in tops + tops:  # twice: the second pass answers from the cache
        expected = {i for i, p in enumerate(pats) if matches(p.split("."), t.split("."))}
        assert trie.match(t) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns(), min_size=1, max_size=20), st.data())
def test_removal_leaves_exactly_the_rest(pats, data):
    trie = SubscriptionTrie()
    for i, p in enumerate(pats):
        trie.add(p, i)
    gone = set(data.draw(st.lists(st.sampled_from(range(len(pats))), unique=True)))
    for i in gone:
        assert trie.remove(i)
    assert not trie.remove(next(iter(gone))) if gone else True
    for t in data.draw(st.lists(topics, min_size=1, max_size=10)):
        expected = {i for i, p in enumerate(pats)
                    if i not in gone and matches(p.split("."), t.split("."))}
        assert trie.match(t) == expected
    for i in range(len(pats)):
        if i not in gone:
            trie.remove(i)
    assert len(trie) == 0
    root = trie._root
    assert not root.children and root.star is None and not root.exact and not root.rest


def test_match_cost_does_not_grow_with_unrelated_subscriptions():
    trie = SubscriptionTrie()
    for i in range(20000):
        trie.add(f"sensor.{i}.temp", i)
    trie.add("sensor.*.temp", "all")
    assert trie.match("sensor.77.temp") == {77, "all"}
    # root, 'sensor', then '77' and '*': whatever the 20,000 other subscriptions
    assert trie.nodes_visited == 4
    trie.match("sensor.77.temp")
    assert trie.nodes_visited == 4  # answered from the cache


def test_duplicate_subscription_value_is_refused():
    trie = SubscriptionTrie()
    trie.add("a.b", 1)
    with pytest.raises(ValueError):
        trie.add("a.c", 1)
