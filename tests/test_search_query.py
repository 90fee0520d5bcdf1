"""The search query parser (agora/search/query.py): every operator and every refusal."""

from __future__ import annotations

from datetime import date

import pytest

from agora.errors import AppError, ErrorCode
from agora.search.query import SearchQuery, parse_query


def refused(q: str) -> str:
    """The message for ``q`` of the 400 the parser must raise."""
    with pytest.raises(AppError) as info:
        parse_query(q)
    err = info.value
    assert err.code is ErrorCode.VALIDATION_ERROR
    assert err.status == 400
    assert err.fields is not None and set(err.fields) == {"q"}
    return err.fields["q"]


def test_words_all_kept_lower_cased_in_order_without_duplicates() -> None:
    assert parse_query("Hello world HELLO again world") == SearchQuery(
        words=("hello", "world", "again")
    )


def test_phrase_whitespace_collapsed_and_lower_cased() -> None:
    query = parse_query('  "The   Quick\tBrown "  fox "the quick brown"')
    assert query.phrases == ("the quick brown",)
    assert query.words == ("fox",)


def test_empty_and_punctuation_only_phrases_are_dropped() -> None:
    assert parse_query('"" "!!" cat') == SearchQuery(words=("cat",))


def test_unclosed_quote_runs_to_the_end() -> None:
    query = parse_query('cat "big  dog -x from:bob')
    assert query.words == ("cat",)
    assert query.phrases == ("big dog -x from:bob",)
    assert query.from_users == ()


def test_quote_inside_a_token_starts_a_phrase() -> None:
    assert parse_query('foo"bar baz"') == SearchQuery(words=("foo",), phrases=("bar baz",))


def test_excluded_word_and_phrase() -> None:
    query = parse_query('cats -Dogs -"Hot   Dogs" -dogs')
    assert query.words == ("cats",)
    assert query.excluded == ("dogs",)
    assert query.excluded_phrases == ("hot dogs",)


def test_lone_dash_is_ignored() -> None:
    assert parse_query("cats - -- -!") == SearchQuery(words=("cats",))


@pytest.mark.parametrize("q", ["from:bob", "FROM:bob", "From:bob"])
def test_from_operator_is_case_insensitive_and_keeps_the_username(q: str) -> None:
    assert parse_query(q) == SearchQuery(from_users=("bob",))


def test_from_keeps_username_as_typed_and_may_repeat() -> None:
    query = parse_query("from:Bob_99 from:alice from:Bob_99 hi")
    assert query.from_users == ("Bob_99", "alice")
    assert query.words == ("hi",)


@pytest.mark.parametrize("value", ["", "ab", "bob!", "@bob", "x" * 31, "bób"])
def test_from_with_an_invalid_username_is_refused_naming_it(value: str) -> None:
    message = refused(f"cats from:{value}")
    assert "from:" in message
    assert repr(value) in message


def test_before_and_after() -> None:
    query = parse_query("after:2024-01-01 BEFORE:2024-02-29 cats")
    assert query.after == date(2024, 1, 1)
    assert query.before == date(2024, 2, 29)
    assert query.words == ("cats",)


def test_dates_alone_are_a_query_and_the_same_day_is_allowed() -> None:
    assert parse_query("after:2024-05-05 before:2024-05-05") == SearchQuery(
        before=date(2024, 5, 5), after=date(2024, 5, 5)
    )


def test_repeated_date_bounds_keep_the_tightest() -> None:
    query = parse_query("before:2024-06-01 before:2024-03-01 after:2023-01-01 after:2023-06-01")
    assert query.before == date(2024, 3, 1)
    assert query.after == date(2023, 6, 1)


@pytest.mark.parametrize("operator", ["before", "after"])
@pytest.mark.parametrize(
    "value", ["2024-13-01", "2024-1-1", "2023-02-29", "20240101", "2024-W01-1", "", "soon"]
)
def test_invalid_dates_are_refused_naming_the_operator(operator: str, value: str) -> None:
    message = refused(f"cats {operator}:{value}")
    assert message.startswith(f"{operator}:")
    assert "YYYY-MM-DD" in message


def test_after_later_than_before_is_refused() -> None:
    message = refused("after:2024-02-01 before:2024-01-31")
    assert "after:2024-02-01" in message and "before:2024-01-31" in message


@pytest.mark.parametrize("q", ["has:media", "HAS:MEDIA", "Has:Media"])
def test_has_media_is_case_insensitive(q: str) -> None:
    assert parse_query(q) == SearchQuery(has_media=True)


def test_has_with_another_value_is_plain_words() -> None:
    assert parse_query("has:other") == SearchQuery(words=("has", "other"))


@pytest.mark.parametrize(
    ("q", "words"),
    [
        ("foo:bar", ("foo", "bar")),
        ("http://example.org/a", ("http", "example", "org", "a")),
        ("to:bob", ("to", "bob")),
    ],
)
def test_unknown_operators_are_split_into_words(q: str, words: tuple[str, ...]) -> None:
    assert parse_query(q) == SearchQuery(words=words)


def test_operators_cannot_be_negated() -> None:
    assert parse_query("cats -from:bob") == SearchQuery(words=("cats",), excluded=("from", "bob"))


def test_surrounding_punctuation_stripped_inner_apostrophe_and_hyphen_kept() -> None:
    query = parse_query("(Don't) 'e-mail', hello!! ... — ?? 'x-- it’s --y")
    assert query.words == ("don't", "e-mail", "hello", "x", "it's")
    assert query.excluded == ("y",)


@pytest.mark.parametrize("q", ["-cats", '-"hot dogs"', "-cats -dogs"])
def test_exclusions_alone_are_refused(q: str) -> None:
    assert refused(q) == "the query has nothing to search for"


@pytest.mark.parametrize("q", ["", "   ", "\t\n", "!!! ?? ...", "-", '""', '" '])
def test_nothing_to_search_for_is_refused(q: str) -> None:
    assert refused(q) == "the query has nothing to search for"


def test_empty_property() -> None:
    assert SearchQuery().empty
    assert SearchQuery(excluded=("x",), excluded_phrases=("y z",)).empty
    assert not SearchQuery(has_media=True).empty
    assert not SearchQuery(after=date(2024, 1, 1)).empty


def test_200_characters_accepted_201_refused() -> None:
    assert parse_query("a" * 200).words == ("a" * 200,)
    assert "200 characters" in refused("a" * 201)


def test_length_is_checked_before_anything_else() -> None:
    assert "200 characters" in refused("-x " * 70)


def test_nul_is_refused() -> None:
    assert "NUL" in refused("cats\x00dogs")


def test_twenty_terms_accepted_twenty_one_refused() -> None:
    twenty = " ".join(f"w{i}" for i in range(18)) + ' "a phrase" -nope'
    query = parse_query(twenty)
    assert len(query.words) == 18 and query.phrases == ("a phrase",)
    assert query.excluded == ("nope",)
    assert "too many terms" in refused(twenty + " one_more")


def test_duplicates_do_not_count_towards_the_term_limit() -> None:
    assert parse_query(" ".join(["same"] * 30)).words == ("same",)


def test_operators_do_not_count_as_terms() -> None:
    q = " ".join(f"w{i}" for i in range(20)) + " from:bob has:media after:2024-01-01"
    assert len(parse_query(q).words) == 20


def test_unicode_is_lower_cased_and_nfkc_normalised() -> None:
    assert parse_query("Zéphyrine").words == ("zéphyrine",)
    assert parse_query("Ze\u0301phyrine").words == ("zéphyrine",)  # decomposed é
    assert parse_query("ＡＢＣ ｆｒｏｍ：bob").words == ("abc",)
    assert parse_query("ＡＢＣ ｆｒｏｍ：bob").from_users == ("bob",)
    assert parse_query('"Ｈｅｌｌｏ　Ｗｏｒｌｄ"').phrases == ("hello world",)
