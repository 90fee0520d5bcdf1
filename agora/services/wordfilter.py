"""The word filter (issue 12): posts and comments that match are held for review.

``AGORA_MODERATION_WORDS`` is a comma-separated list of words or phrases, matched
case-insensitively as whole words (``spam`` matches "SPAM!" but not "spammer");
``AGORA_MODERATION_PATTERNS`` a list of Python regular expressions separated by newlines (a comma
may be part of a pattern), matched case-insensitively anywhere in the text. Both are validated
at start-up (agora/config.py): a pattern that does not compile, is longer than 200 characters,
or repeats a group that itself repeats (``(a+)+``, the classic catastrophic backtracking) stops
the node with a message naming it. Texts are at most 10,000 characters, which bounds the rest.

A matching post or comment is stored *held*: visible only to its author, absent from feeds,
search and notifications, with a report (category ``other``, no reporter, "held by the word
filter") in the moderators' queue. ``dismiss`` publishes it, ``remove`` deletes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class WordFilter:
    def __init__(self, words: Sequence[str] = (), patterns: Sequence[str] = ()) -> None:
        parts = []
        if words:
            alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            parts.append(rf"(?<!\w)(?:{alternatives})(?!\w)")
        parts.extend(f"(?:{p})" for p in patterns)
        self._regex = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    @property
    def enabled(self) -> bool:
        return self._regex is not None

    def matches(self, text: str) -> bool:
        return self._regex is not None and self._regex.search(text) is not None
