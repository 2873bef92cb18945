"""Topic and pattern syntax (NATS subjects): dot-separated tokens inside a realm.

A token is 1-64 characters of A-Z a-z 0-9 _ - (the original's alphabet). In a
pattern, ``*`` matches exactly one token and ``>`` (last token only) one or more.
Published topics never contain wildcards.
"""

from __future__ import annotations

import re

from macula.errors import ErrorCode, MaculaError

MAX_TOPIC_LENGTH = 256
MAX_TOKENS = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TopicError(MaculaError):
    code = ErrorCode.BAD_TOPIC


def _tokens(text: str, what: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise TopicError(f"{what} must be a non-empty string")
    if len(text) > MAX_TOPIC_LENGTH:
        raise TopicError(f"{what} {text[:40]!r}... is longer than {MAX_TOPIC_LENGTH} characters")
    tokens = text.split(".")
    if len(tokens) > MAX_TOKENS:
        raise TopicError(f"{what} {text!r} has more than {MAX_TOKENS} tokens")
    return tokens


def validate_topic(topic: str) -> list[str]:
    """Tokens of a publishable topic, or TopicError saying what is wrong."""
    tokens = _tokens(topic, "topic")
    for i, tok in enumerate(tokens):
        if not tok:
            raise TopicError(f"topic {topic!r} has an empty token at position {i}")
        if tok in ("*", ">"):
            raise TopicError(f"topic {topic!r} contains wildcard {tok!r}: publish to a concrete topic")
        if not _TOKEN.fullmatch(tok):
            raise TopicError(f"topic {topic!r}: token {tok!r} may only use A-Z a-z 0-9 _ -")
    return tokens


def validate_pattern(pattern: str) -> list[str]:
    """Tokens of a subscription pattern (wildcards allowed), or TopicError."""
    tokens = _tokens(pattern, "pattern")
    last = len(tokens) - 1
    for i, tok in enumerate(tokens):
        if not tok:
            raise TopicError(f"pattern {pattern!r} has an empty token at position {i}")
        if tok == ">":
            if i != last:
                raise TopicError(f"pattern {pattern!r}: '>' may only be the last token")
        elif tok != "*" and not _TOKEN.fullmatch(tok):
            raise TopicError(f"pattern {pattern!r}: token {tok!r} may only use A-Z a-z 0-9 _ - "
                             f"or be a whole-token wildcard '*' / '>'")
    return tokens


def literal_prefix(tokens: list[str]) -> str:
    """The tokens before the first wildcard, joined: where a pattern is indexed in the DHT."""
    out = []
    for tok in tokens:
        if tok in ("*", ">"):
            break
        out.append(tok)
    return ".".join(out)


def matches(pattern_tokens: list[str], topic_tokens: list[str]) -> bool:
    """Reference matcher (linear): used by tests and for single checks."""
    for i, p in enumerate(pattern_tokens):
        if p == ">":
            return len(topic_tokens) > i
        if i >= len(topic_tokens):
            return False
        if p != "*" and p != topic_tokens[i]:
            return False
    return len(pattern_tokens) == len(topic_tokens)
