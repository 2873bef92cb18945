"""Pub/sub: topics with NATS wildcards, matching, and delivery across the mesh."""

from macula.pubsub.topics import (
    TopicError, literal_prefix, matches, validate_pattern, validate_topic,
)
from macula.pubsub.trie import SubscriptionTrie

__all__ = ["SubscriptionTrie", "TopicError", "literal_prefix", "matches", "validate_pattern",
           "validate_topic"]
