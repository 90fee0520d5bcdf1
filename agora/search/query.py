"""The one parser for the ``q`` of ``GET /api/v1/search`` (issue 10).

Both backends (PostgreSQL full text and Elasticsearch) build their queries from the
:class:`SearchQuery` this module returns and never look at ``q`` themselves.

Grammar::

    query    := term*                       terms are separated by whitespace outside quotes
    term     := phrase | "-" phrase | operator | "-" word | word
    phrase   := '"' text '"'                an unclosed '"' runs to the end of the query
    operator := "from:" username            ^[A-Za-z0-9_]{3,30}$, kept as typed
              | "before:" YYYY-MM-DD        a real calendar date, exactly 10 characters
              | "after:" YYYY-MM-DD
              | "has:media"

* Words must all match; phrases must all match as phrases; ``-word`` and ``-"a phrase"``
  exclude; ``from:`` may repeat (any of the users); a repeated ``before:`` / ``after:``
  keeps the tightest bound; ``after:`` later than ``before:`` is an error (the same day is
  not). What the bounds include (the named day or not, which time zone) is for the
  caller's backend contract, not the parser.
* Operator names are case-insensitive (``FROM:bob``, ``Has:Media``). Operators cannot be
  negated: ``-from:bob`` excludes the words ``from`` and ``bob``.
* Anything else is plain words. The query is NFKC-normalised first (full-width ``ＡＢＣ``
  is ``ABC``); a bare token is lower-cased and split on every character that is not a
  letter, digit, ``_``, apostrophe or hyphen, and each piece loses its leading and
  trailing apostrophes and hyphens. So ``foo:bar`` and ``has:other`` are the words
  ``foo bar`` / ``has other``, ``http://x.org`` is ``http x org``, while ``don't`` and
  ``e-mail`` stay whole. Tokens with no letter or digit (``-``, ``!!``) are ignored.
* A phrase keeps its inner text, lower-cased with whitespace collapsed; a phrase with no
  letter or digit (``""``, ``"!!"``) is dropped. Duplicates are dropped everywhere, first
  occurrence kept.

Errors are ``validation_error`` with status 400 and ``fields={"q": ...}``: ``q`` longer
than 200 characters or holding NUL; a bad ``from:``/``before:``/``after:`` value; more
than 20 terms (words + phrases + exclusions, after de-duplication); and a query with
nothing to search for: exclusions alone are not a query.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

import msgspec

from agora.errors import AppError, ErrorCode

MAX_QUERY_LENGTH = 200
MAX_TERMS = 20

_TOKEN = re.compile(r'(?P<neg>-)?"(?P<phrase>[^"]*)"?|(?P<bare>[^\s"]+)')
_OPERATOR = re.compile(r"(?P<name>from|before|after|has):(?P<value>.*)", re.IGNORECASE | re.DOTALL)
_USERNAME = re.compile(r"[A-Za-z0-9_]{3,30}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_WORD_BREAK = re.compile(r"[^\w'-]+")
_HAS_WORD = re.compile(r"[^\W_]")  # a letter or digit
_SPACES = re.compile(r"\s+")


class SearchQuery(msgspec.Struct, frozen=True):
    """A parsed search query; every text is already normalised (see the module docstring)."""

    words: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    excluded_phrases: tuple[str, ...] = ()
    from_users: tuple[str, ...] = ()
    before: date | None = None
    after: date | None = None
    has_media: bool = False

    @property
    def empty(self) -> bool:
        """Nothing to search for: exclusions alone do not make a query."""
        return not (
            self.words
            or self.phrases
            or self.from_users
            or self.before
            or self.after
            or self.has_media
        )


def _bad(message: str) -> AppError:
    return AppError(
        ErrorCode.VALIDATION_ERROR,
        "the query string is not valid",
        status=400,
        fields={"q": message},
    )


def _words(token: str) -> list[str]:
    pieces = (p.strip("'-") for p in _WORD_BREAK.split(token.lower()))
    return [p for p in pieces if _HAS_WORD.search(p)]


def _date(name: str, value: str) -> date:
    if _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _bad(f"{name}: needs a date as YYYY-MM-DD, not {value!r}")


def parse_query(q: str) -> SearchQuery:
    """Parse ``q`` or raise the 400 ``validation_error`` naming ``q``."""
    if len(q) > MAX_QUERY_LENGTH:
        raise _bad(f"must be at most {MAX_QUERY_LENGTH} characters")
    if "\x00" in q:
        raise _bad("must not contain NUL characters (\\u0000)")
    text = unicodedata.normalize("NFKC", q).replace("\u2019", "'")

    words: dict[str, None] = {}  # dicts: ordered sets
    phrases: dict[str, None] = {}
    excluded: dict[str, None] = {}
    excluded_phrases: dict[str, None] = {}
    from_users: dict[str, None] = {}
    before: date | None = None
    after: date | None = None
    has_media = False

    for match in _TOKEN.finditer(text):
        bare = match["bare"]
        if bare is None:
            phrase = _SPACES.sub(" ", match["phrase"]).strip().lower()
            if _HAS_WORD.search(phrase):
                (excluded_phrases if match["neg"] else phrases)[phrase] = None
            continue
        if bare.startswith("-"):
            excluded.update(dict.fromkeys(_words(bare[1:])))
            continue
        operator = _OPERATOR.fullmatch(bare)
        name = operator["name"].lower() if operator else ""
        value = operator["value"] if operator else ""
        if name == "from":
            if not _USERNAME.fullmatch(value):
                raise _bad(f"from: needs a username of 3-30 letters, digits or _, not {value!r}")
            from_users[value] = None
        elif name == "before":
            day = _date(name, value)
            before = day if before is None else min(before, day)
        elif name == "after":
            day = _date(name, value)
            after = day if after is None else max(after, day)
        elif name == "has" and value.lower() == "media":
            has_media = True
        else:
            words.update(dict.fromkeys(_words(bare)))

    if before is not None and after is not None and after > before:
        raise _bad(f"after:{after.isoformat()} is later than before:{before.isoformat()}")
    if len(words) + len(phrases) + len(excluded) + len(excluded_phrases) > MAX_TERMS:
        raise _bad(f"too many terms: at most {MAX_TERMS} words, phrases and exclusions")
    query = SearchQuery(
        words=tuple(words),
        phrases=tuple(phrases),
        excluded=tuple(excluded),
        excluded_phrases=tuple(excluded_phrases),
        from_users=tuple(from_users),
        before=before,
        after=after,
        has_media=has_media,
    )
    if query.empty:
        raise _bad("the query has nothing to search for")
    return query
