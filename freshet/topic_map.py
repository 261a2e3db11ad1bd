"""``--topic DECLARED=ACTUAL``: read or write the topic ACTUAL where the feature definitions declare DECLARED.

The delta job (``freshet job``), its raw-topic export and backfill from ``kafka://`` all take the option;
this is its one parser. Each command turns ``TopicMapError`` into its own way of failing.
"""

from __future__ import annotations

from collections.abc import Iterable

from freshet.errors import FreshetError


class TopicMapError(FreshetError):
    """A ``--topic`` value that is not ``DECLARED=ACTUAL``."""


def parse_topic_map(pairs: Iterable[str] | None) -> dict[str, str]:
    """``["declared=actual", ...]`` → ``{declared: actual}``; a later pair for a declared topic wins.

    Both sides must be non-empty; ACTUAL is everything after the first ``=``.

    >>> parse_topic_map(["engagement=prod.engagement", "item.attributes=prod.items"])
    {'engagement': 'prod.engagement', 'item.attributes': 'prod.items'}
    >>> parse_topic_map(["engagement"])
    Traceback (most recent call last):
    ...
    freshet.topic_map.TopicMapError: --topic wants DECLARED=ACTUAL, got 'engagement'
    """
    mapping = {}
    for pair in pairs or ():
        declared, sep, actual = pair.partition("=")
        if not sep or not declared or not actual:
            raise TopicMapError(f"--topic wants DECLARED=ACTUAL, got {pair!r}")
        mapping[declared] = actual
    return mapping
