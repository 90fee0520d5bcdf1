"""Reports, the moderators' queue and actions, suspensions, the word filter and the audit log
(issue 12, points 2-5), through the real HTTP API on real PostgreSQL, Redis and event bus."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.config import ConfigError, ModerationConfig, load_config
from agora.server import keys
from agora.services.wordfilter import WordFilter
from tests.conftest import AppFactory
from tests.support.api import (
    befriend,
    create_post,
    expect_error,
    friends_in_a_direct_conversation,
    get_json,
    register,
    unique,
)
from tests.support.moderation import (
    API,
    audit,
    login,
    notification,
    queue,
    report,
    resolve,
    suspend,
    unsuspend,
    with_role,
)
from tests.test_cli import _agora


async def send(client: TestClient, user: object, conversation: str, text: str) -> dict[str, str]:
    resp = await client.post(
        f"{API}/conversations/{conversation}/messages",
        headers=user.headers,  # type: ignore[attr-defined]
        json={"text": text, "client_id": unique("c")},
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


# -- reports -------------------------------------------------------------------------------------


async def test_a_report_needs_a_subject_the_reporter_can_see(client: TestClient) -> None:
    author, friend, stranger = (
        await register(client),
        await register(client),
        await register(client),
    )
    await befriend(client, author, friend)
    post = await create_post(client, author, "friends only", "friends")

    # Not visible to a stranger: exactly like a post that does not exist.
    hidden = await client.post(
        f"{API}/reports",
        headers=stranger.headers,
        json={"subject_type": "post", "subject_id": post["id"], "reason": "x"},
    )
    missing = await client.post(
        f"{API}/reports",
        headers=stranger.headers,
        json={"subject_type": "post", "subject_id": "12345", "reason": "x"},
    )
    assert (await expect_error(hidden, 404, "not_found"))["message"] == (
        await expect_error(missing, 404, "not_found")
    )["message"]
    anonymous = await client.post(
        f"{API}/reports", json={"subject_type": "post", "subject_id": post["id"], "reason": "x"}
    )
    await expect_error(anonymous, 401, "unauthorized")

    made = await report(client, friend, "post", post["id"], "harassment")
    assert made["status"] == "open" and made["category"] == "harassment"
    assert made["subject_type"] == "post" and made["subject_id"] == post["id"]
    # One open report per reporter and subject.
    again = await client.post(
        f"{API}/reports",
        headers=friend.headers,
        json={"subject_type": "post", "subject_id": post["id"], "reason": "again"},
    )
    await expect_error(again, 409, "conflict")
    # Category defaults to other; a bad one is a validation error; yourself is refused.
    resp = await client.post(
        f"{API}/reports",
        headers=friend.headers,
        json={"subject_type": "user", "subject_id": author.id, "reason": "x"},
    )
    assert resp.status == 201 and (await resp.json())["category"] == "other"
    bad = await client.post(
        f"{API}/reports",
        headers=friend.headers,
        json={"subject_type": "user", "subject_id": author.id, "reason": "x", "category": "meh"},
    )
    await expect_error(bad, 422, "validation_error")
    own = await client.post(
        f"{API}/reports",
        headers=author.headers,
        json={"subject_type": "post", "subject_id": post["id"], "reason": "x"},
    )
    await expect_error(own, 422, "validation_error")


async def test_a_message_report_carries_that_message_only(client: TestClient) -> None:
    a, b, conversation = await friends_in_a_direct_conversation(client)
    outsider, moderator = await register(client), await with_role(client, "moderator")
    await send(client, a, conversation, "an earlier message, not reported")
    message = await send(client, a, conversation, "the reported message")
    await send(client, b, conversation, "a later message, not reported")

    await report(client, outsider, "message", message["id"], status=404)  # not a member
    await report(client, b, "message", message["id"], "harassment")
    [item] = [r for r in await queue(client, moderator) if r["subject_id"] == message["id"]]
    assert item["subject"]["text"] == "the reported message"
    assert set(item["subject"]) == {
        "id",
        "conversation_id",
        "seq",
        "sender_id",
        "sender_username",
        "text",
        "created_at",
    }
    assert "not reported" not in str(item)
    assert item["reporter_id"] == b.id and item["subject_user_id"] == a.id


async def test_queue_resolution_and_the_reporters_notification(client: TestClient) -> None:
    author, r1, r2 = await register(client), await register(client), await register(client)
    moderator = await with_role(client, "moderator")
    post = await create_post(client, author, "questionable", "public")
    first = await report(client, r1, "post", post["id"], "spam")
    second = await report(client, r2, "user", author.id, "illegal")

    items = await queue(client, moderator)
    ids = [i["id"] for i in items]
    assert ids.index(first["id"]) < ids.index(second["id"])  # oldest first
    assert [i["id"] for i in await queue(client, moderator, "&category=illegal")] == [second["id"]]

    done = await resolve(client, moderator, first["id"], "dismiss", "not spam")
    assert done["status"] == "resolved" and done["action"] == "dismiss"
    assert done["resolved_by"] == moderator.id and done["note"] == "not spam"
    await resolve(client, moderator, first["id"], "dismiss", status=409)
    assert first["id"] not in [i["id"] for i in await queue(client, moderator)]
    assert first["id"] in [i["id"] for i in await queue(client, moderator, "&status=resolved")]
    # The post is untouched by a dismissal.
    await get_json(client, f"{API}/posts/{post['id']}", r1)

    told = await notification(client, r1, "report_resolved")
    assert told["subject_type"] == "report" and told["subject_id"] == first["id"]
    assert told["actor"]["id"] == moderator.id
    # The reporter reads the outcome; nobody else reads their report.
    outcome = await get_json(client, f"{API}/reports/{first['id']}", r1)
    assert outcome["status"] == "resolved" and outcome["action"] == "dismiss"
    assert outcome["resolved_at"]
    await get_json(client, f"{API}/reports/{first['id']}", r2, status=404)
    pending = await get_json(client, f"{API}/reports/{second['id']}", r2)
    assert pending["status"] == "open" and pending["action"] is None


async def test_remove_deletes_through_the_authors_path_and_closes_every_report(
    client: TestClient,
) -> None:
    author, r1, r2 = await register(client), await register(client), await register(client)
    moderator = await with_role(client, "moderator")
    post = await create_post(client, author, "remove me please", "public")
    first = await report(client, r1, "post", post["id"])
    second = await report(client, r2, "post", post["id"])
    await resolve(client, moderator, first["id"], "remove", "against the rules")

    await get_json(client, f"{API}/posts/{post['id']}", author, status=404)
    resolved = {i["id"]: i for i in await queue(client, moderator, "&status=resolved")}
    assert resolved[second["id"]]["action"] == "remove"  # closed with it
    await notification(client, r2, "report_resolved")

    entries = await audit(client, moderator, f"&target_type=post&target_id={post['id']}")
    [deleted] = [e for e in entries if e["action"] == "post.delete"]
    assert deleted["actor"] == {"id": moderator.id, "username": moderator.username}
    assert deleted["via"] == "api"
    assert deleted["human_identifier"] == f"@{author.username}: remove me please"
    assert deleted["target"]["text"] == "remove me please"  # the copy outlives the post
    [resolution] = await audit(client, moderator, f"&action=report.resolve&target_id={first['id']}")
    assert resolution["note"] == "against the rules"
    assert resolution["target"]["subject"]["text"] == "remove me please"


async def test_remove_of_a_comment_and_of_a_message(client: TestClient) -> None:
    a, b, conversation = await friends_in_a_direct_conversation(client)
    moderator = await with_role(client, "moderator")
    post = await create_post(client, b, "a post", "friends")
    resp = await client.post(
        f"{API}/posts/{post['id']}/comments", headers=a.headers, json={"text": "rude comment"}
    )
    comment = await resp.json()
    message = await send(client, a, conversation, "rude message")
    after = await send(client, b, conversation, "after it")

    for kind, subject in (("comment", comment["id"]), ("message", message["id"])):
        made = await report(client, b, kind, subject)
        await resolve(client, moderator, made["id"], "remove")

    page = await get_json(client, f"{API}/posts/{post['id']}/comments", b)
    assert page["items"] == []
    history = await get_json(client, f"{API}/conversations/{conversation}/messages", b)
    by_seq = {m["seq"]: m for m in history["items"]}
    tomb = by_seq[message["seq"]]
    assert tomb["id"] == message["id"] and tomb["removed"] is True and tomb["text"] == ""
    assert by_seq[after["seq"]]["text"] == "after it" and by_seq[after["seq"]]["removed"] is False
    actions = [e["action"] for e in await audit(client, moderator)]
    assert "comment.delete" in actions and "message.remove" in actions


# -- suspension ----------------------------------------------------------------------------------


async def test_suspension_cuts_the_account_off_and_unsuspension_brings_it_back(
    client: TestClient,
) -> None:
    user, friend = await register(client), await register(client)
    moderator = await with_role(client, "moderator")
    await befriend(client, user, friend)
    post = await create_post(client, user, "my post", "public")

    done = await suspend(client, moderator, user.id, reason="spamming")
    assert done["status"] == "suspended" and done["reason"] == "spamming"
    resp = await client.get(f"{API}/users/me", headers=user.headers)
    assert resp.status in (401, 403)
    resp = await client.post(
        f"{API}/auth/login", json={"login": user.username, "password": "correct horse battery"}
    )
    assert "suspended" in (await expect_error(resp, 403, "forbidden"))["message"]
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": user.refresh})
    assert "suspended" in (await expect_error(resp, 403, "forbidden"))["message"]
    await get_json(client, f"{API}/users/{user.id}", friend, status=404)
    await get_json(client, f"{API}/posts/{post['id']}", friend, status=404)
    await get_json(client, f"{API}/posts/{post['id']}", None, status=404)

    await unsuspend(client, moderator, user.id)
    await unsuspend(client, moderator, user.id, status=409)  # not suspended any more
    fresh = await login(client, user)
    me = await client.get(
        f"{API}/users/me", headers={"Authorization": f"Bearer {fresh['access_token']}"}
    )
    assert me.status == 200
    await get_json(client, f"{API}/posts/{post['id']}", friend)  # content back
    actions = [e["action"] for e in await audit(client, moderator, f"&target_id={user.id}")]
    assert actions[:2] == ["user.unsuspend", "user.suspend"]  # newest first


async def test_a_suspension_with_an_end_is_lifted_at_login_and_by_the_job(
    client: TestClient,
) -> None:
    first, second = await register(client), await register(client)
    moderator = await with_role(client, "moderator")
    until = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    await suspend(client, moderator, first.id, until=until)
    await suspend(client, moderator, second.id, until=until)
    await login(client, first, status=403)
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    resp = await client.post(
        f"{API}/admin/users/{first.id}/suspend",
        headers=moderator.headers,
        json={"reason": "x", "until": past},
    )
    await expect_error(resp, 422, "validation_error")
    await asyncio.sleep(1.6)

    await login(client, first)  # found over at login: lifted then
    lifted = await client.server.app[keys.MODERATION].lift_expired()  # the housekeeping job
    assert lifted == 1
    await login(client, second)
    entries = await audit(client, moderator, "&action=user.unsuspend")
    system = [e for e in entries if e["target_id"] in (first.id, second.id)]
    assert len(system) == 2 and all(e["actor"] is None and e["via"] == "system" for e in system)


async def test_who_may_suspend_whom(client: TestClient) -> None:
    moderator, other_moderator = (
        await with_role(client, "moderator"),
        await with_role(client, "moderator"),
    )
    admin, other_admin = await with_role(client, "admin"), await with_role(client, "admin")
    await suspend(client, moderator, other_moderator.id, status=403)
    await suspend(client, moderator, admin.id, status=403)
    await suspend(client, moderator, moderator.id, status=403)
    await suspend(client, admin, other_admin.id, status=403)
    await suspend(client, admin, other_moderator.id)
    await suspend(client, admin, "999999999", status=404)


# -- the word filter -----------------------------------------------------------------------------


async def test_held_content_is_its_authors_alone_until_a_moderator_decides(
    make_client: AppFactory,
) -> None:
    client = await make_client(
        moderation=ModerationConfig(words=("forbiddenword",), patterns=(r"b[a4]dw[o0]rd",))
    )
    author, friend = await register(client), await register(client)
    moderator = await with_role(client, "moderator")
    await befriend(client, author, friend)

    held = await create_post(client, author, "this has a FORBIDDENWORD in it", "public")
    clean = await create_post(client, author, "forbiddenwords is not the whole word", "public")
    pattern = await create_post(client, author, "b4dw0rd", "friends")
    assert held["held"] is True and clean["held"] is False
    # The author sees it, flagged.
    assert (await get_json(client, f"{API}/posts/{held['id']}", author))["held"] is True
    await get_json(client, f"{API}/posts/{held['id']}", friend, status=404)
    await get_json(client, f"{API}/posts/{pattern['id']}", friend, status=404)
    feed = [p["id"] for p in (await get_json(client, f"{API}/feed", friend))["items"]]
    assert clean["id"] in feed and held["id"] not in feed and pattern["id"] not in feed

    holds = {r["subject_id"]: r for r in await queue(client, moderator) if r["held"]}
    assert set(holds) >= {held["id"], pattern["id"]} and clean["id"] not in holds
    hold = holds[held["id"]]
    assert hold["reporter_id"] is None and hold["category"] == "other"
    assert hold["reason"] == "held by the word filter"

    # dismiss publishes it (fanned out as a new post); remove deletes it.
    await resolve(client, moderator, hold["id"], "dismiss")
    await get_json(client, f"{API}/posts/{held['id']}", friend)
    feed = [p["id"] for p in (await get_json(client, f"{API}/feed", friend))["items"]]
    assert held["id"] in feed
    await resolve(client, moderator, holds[pattern["id"]]["id"], "remove")
    await get_json(client, f"{API}/posts/{pattern['id']}", author, status=404)

    # An edit that brings a word in holds the published post again; dismiss shows it again.
    resp = await client.patch(
        f"{API}/posts/{clean['id']}", headers=author.headers, json={"text": "now forbiddenword"}
    )
    assert resp.status == 200
    await get_json(client, f"{API}/posts/{clean['id']}", friend, status=404)
    [hold] = [r for r in await queue(client, moderator) if r["subject_id"] == clean["id"]]
    assert hold["held"] and hold["subject"]["edited"] is True
    await resolve(client, moderator, hold["id"], "dismiss")
    await get_json(client, f"{API}/posts/{clean['id']}", friend)

    # Comments too.
    resp = await client.post(
        f"{API}/posts/{clean['id']}/comments",
        headers=friend.headers,
        json={"text": "forbiddenword!"},
    )
    comment = await resp.json()
    assert resp.status == 201
    shown = await get_json(client, f"{API}/posts/{clean['id']}/comments", author)
    assert comment["id"] not in [c["id"] for c in shown["items"]]
    own = await get_json(client, f"{API}/posts/{clean['id']}/comments", friend)
    assert comment["id"] in [c["id"] for c in own["items"]]
    [hold] = [r for r in await queue(client, moderator) if r["subject_id"] == comment["id"]]
    await resolve(client, moderator, hold["id"], "dismiss")
    shown = await get_json(client, f"{API}/posts/{clean['id']}/comments", author)
    assert comment["id"] in [c["id"] for c in shown["items"]]


def test_word_filter_matching() -> None:
    f = WordFilter(["spam", "buy now"], [r"fr[e3]{2} money"])
    assert f.matches("SPAM!") and f.matches("please buy   now".replace("   ", " "))
    assert not f.matches("spammer") and not f.matches("antispam")
    assert f.matches("get FR33 money") and not f.matches("free time")
    assert not WordFilter().matches("anything") and not WordFilter().enabled


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("(unclosed", "not a regular expression"),
        ("(a+)+$", "catastrophic"),
        ("(\\w*)*x", "catastrophic"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_patterns_are_validated_at_start_up(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"AGORA_MODERATION_PATTERNS": value})
    assert caught.value.variable == "AGORA_MODERATION_PATTERNS" and problem in str(caught.value)


def test_filter_settings_are_read() -> None:
    config = load_config(
        {"AGORA_MODERATION_WORDS": "Spam, eggs,,", "AGORA_MODERATION_PATTERNS": "a\\d+\nb[0o]b"}
    )
    assert config.moderation == ModerationConfig(
        words=("spam", "eggs"), patterns=("a\\d+", "b[0o]b")
    )
    assert load_config({}).moderation == ModerationConfig()


# -- the audit log -------------------------------------------------------------------------------


async def test_the_audit_log_is_append_only_and_paginated(
    client: TestClient, database_url: str
) -> None:
    moderator = await with_role(client, "moderator")
    targets = [await register(client) for _ in range(3)]
    for target in targets:
        await suspend(client, moderator, target.id)
    page = await get_json(client, f"{API}/admin/audit?action=user.suspend&limit=2", moderator)
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert [e["target_id"] for e in page["items"]] == [targets[2].id, targets[1].id]
    rest = await get_json(
        client,
        f"{API}/admin/audit?action=user.suspend&limit=2&cursor={page['next_cursor']}",
        moderator,
    )
    assert rest["items"][0]["target_id"] == targets[0].id
    entry = page["items"][0]
    assert entry["human_identifier"] == f"@{targets[2].username}"
    assert entry["target"]["username"] == targets[2].username and entry["note"] == "test suspension"

    conn = await asyncpg.connect(database_url)
    try:
        for statement in (
            "UPDATE moderation.audit_log SET note = 'changed'",
            "DELETE FROM moderation.audit_log",
            "TRUNCATE moderation.audit_log",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
    # No API changes or deletes an entry.
    for method in ("PUT", "PATCH", "DELETE"):
        resp = await client.request(method, f"{API}/admin/audit", headers=moderator.headers)
        assert resp.status == 405


async def test_cli_role_changes_are_audited(client: TestClient, database_url: str) -> None:
    admin = await with_role(client, "admin")
    name = unique("cli")
    await register(client, name)
    with tempfile.TemporaryDirectory() as tmp:
        proc = await asyncio.to_thread(
            _agora,
            ["admin", "set-role", "--username", name, "--role", "moderator"],
            database_url,
            Path(tmp),
        )
    assert proc.returncode == 0, proc.stderr
    [entry] = [
        e
        for e in await audit(client, admin, "&action=user.set_role")
        if e["human_identifier"] == f"@{name}"
    ]
    assert entry["actor"] is None and entry["via"] == "cli"
    assert entry["note"] == "role user -> moderator" and entry["target"]["role"] == "user"


async def test_every_moderator_and_admin_action_is_audited(
    client: TestClient, database_url: str
) -> None:
    moderator = await with_role(client, "moderator")
    a, b, conversation = await friends_in_a_direct_conversation(client)
    post = await create_post(client, a, "deleted by a moderator", "public")
    own = await create_post(client, a, "deleted by its author", "public")
    resp = await client.post(
        f"{API}/posts/{post['id']}/comments", headers=b.headers, json={"text": "a comment"}
    )
    comment = await resp.json()
    message = await send(client, a, conversation, "a message")

    # Directly (not through a report): a moderator deleting others' content.
    resp = await client.delete(f"{API}/comments/{comment['id']}", headers=moderator.headers)
    assert resp.status == 204
    resp = await client.delete(f"{API}/posts/{post['id']}", headers=moderator.headers)
    assert resp.status == 204
    resp = await client.delete(f"{API}/posts/{own['id']}", headers=a.headers)
    assert resp.status == 204  # the author's own: not a moderator action
    made = await report(client, b, "message", message["id"])
    await resolve(client, moderator, made["id"], "remove")
    await suspend(client, moderator, b.id)
    await unsuspend(client, moderator, b.id)
    name = unique("cli")
    with tempfile.TemporaryDirectory() as tmp:
        for args in (
            [
                *("admin", "create-user", "--username", name),
                *("--email", f"{name}@example.test", "--password", "long enough pw"),
            ],
            ["admin", "set-role", "--username", name, "--role", "moderator"],
        ):
            proc = await asyncio.to_thread(_agora, args, database_url, Path(tmp))
            assert proc.returncode == 0, proc.stderr

    entries = await audit(client, moderator)
    by_action: dict[str, dict[str, Any]] = {}
    for e in entries:  # newest first: this test's entry of each action
        by_action.setdefault(e["action"], e)
    assert set(by_action) >= {
        "comment.delete",
        "post.delete",
        "message.remove",
        "report.resolve",
        "user.suspend",
        "user.unsuspend",
        "user.create",
        "user.set_role",
    }
    assert by_action["comment.delete"]["target"]["text"] == "a comment"
    assert by_action["message.remove"]["target"]["text"] == "a message"
    assert by_action["user.create"]["actor"] is None and by_action["user.create"]["via"] == "cli"
    assert own["id"] not in [e["target_id"] for e in entries]
    for entry in entries:
        assert entry["human_identifier"] and entry["created_at"]
        assert (entry["actor"] is None) == (entry["via"] != "api")
