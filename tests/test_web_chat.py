"""The web client's chat screen (agora/web/static/screens/chat*.js) in Chromium, two users on
the two nodes of a cluster: user A's browser on node a, B's on node b, so every live frame
crosses nodes. Driven by role and accessible name, as assistive technology would.

Covered: starting a direct conversation and a group ("New message", "New group", "Add
members"), typing indicators, live messages, pending then sent, read receipts ("Seen", after a
reload too), the last message previewed in the list, the unread badge in the navigation, history
loaded on scrolling up (the view kept still), a client going offline (its sends kept pending and
resent with the same client_id, what it missed synced in order, nothing twice), presence, and
the phone layout (list and thread as two screens, no horizontal scroll). Screenshots:
docs/screenshots/chat-desktop.png, chat-phone.png, chat-list-phone.png.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.support.browser import (
    UserFactory,
    WebCluster,
    allow_console_errors,
    browser_fixture,  # noqa: F401 (the fixture "browser")
    screenshot,
    web_cluster_fixture,  # noqa: F401 (the fixture "web_cluster")
    web_user_fixture,  # noqa: F401 (the fixture "web_user")
)
from tests.support.webapi import PASSWORD, User, befriend, log_in, person, register, rest

pytestmark = pytest.mark.slow


def direct(base: str, one: User, other: User) -> str:
    return str(rest(base, "POST", "/conversations", one, member_ids=[other.id])["id"])


# -- the UI -----------------------------------------------------------------------------------


def sign_up(page: Page, base: str, user: User) -> None:
    """Create the account through the sign-up form, landing on the chat screen."""
    page.goto(f"{base}/#/chat")
    page.get_by_role("button", name="I am new here").click()
    form = page.get_by_role("form", name="Create an account")
    form.get_by_label("Username").fill(user.username)
    form.get_by_label("Email").fill(f"{user.username}@example.org")
    form.get_by_label("Display name").fill(user.display_name)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Chats")).to_be_visible()


def sign_in(page: Page, base: str, user: User, where: str = "#/chat") -> None:
    page.goto(f"{base}/{where}")
    form = page.get_by_role("form", name="Sign in")
    form.get_by_label("Username").fill(user.username)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()


def history(page: Page) -> Locator:
    return page.get_by_role("region", name="Chat history")


def message(page: Page, text: str) -> Locator:
    """The list item of the message whose text is exactly ``text``."""
    return history(page).get_by_role("listitem").filter(has=page.get_by_text(text, exact=True))


def texts(page: Page) -> list[str]:
    return [t.strip() for t in history(page).locator(".bubble").all_inner_texts()]


def send(page: Page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def chat_link(page: Page) -> Locator:
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=re.compile("^Chat"))


def no_horizontal_scroll(page: Page) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width


# -- tests ------------------------------------------------------------------------------------


def test_direct_conversation_live_across_nodes(
    web_cluster: WebCluster, web_user: UserFactory
) -> None:
    ann, bob = person("Ann"), person("Bob")
    a, b = web_user(web_cluster.a), web_user(web_cluster.b)
    sign_up(a, web_cluster.a, ann)
    sign_up(b, web_cluster.b, bob)
    befriend(web_cluster.a, log_in(web_cluster.a, ann), log_in(web_cluster.a, bob))

    # A starts the conversation from "New message".
    a.get_by_role("button", name="New message").click()
    dialog = a.get_by_role("dialog", name="New message")
    dialog.get_by_label("Find a friend").fill("bo")
    dialog.get_by_role("button", name=re.compile("^Bob")).click()
    expect(dialog).to_be_hidden()
    expect(a.get_by_role("heading", name="Bob", exact=True)).to_be_visible()
    expect(a.get_by_role("textbox", name="Message")).to_be_focused()
    expect(a).to_have_url(re.compile(r"#/chat/\d+$"))
    expect(history(a)).to_contain_text("No messages yet")

    # B is on another screen: A's message moves B's unread badge, and shows as sent to A.
    nav = b.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name=re.compile("^Notifications")).click()
    expect(b).to_have_url(re.compile("#/notifications$"))
    expect(chat_link(b)).to_have_accessible_name("Chat")
    send(a, "Hello Bob!")
    expect(message(a, "Hello Bob!")).to_contain_text("Sent")
    expect(chat_link(b)).to_have_accessible_name("Chat 1 unread")
    chat_link(b).click()
    conversation = b.get_by_role("list", name="Conversations").get_by_role(
        "link", name=re.compile("^Ann")
    )
    expect(conversation).to_have_accessible_name(re.compile("1 unread$"))

    # B opens it: the receipt reaches A ("Seen"), B's badge clears.
    conversation.click()
    expect(message(b, "Hello Bob!")).to_be_visible()
    expect(message(a, "Hello Bob!")).to_contain_text("Seen")
    expect(chat_link(b)).to_have_accessible_name("Chat")
    expect(conversation).to_contain_text("Hello Bob!")  # the preview; no name in a direct one

    # A reloads: "Seen" survives (B has sent nothing, so only B's receipt in the conversation's
    # read_seqs can say so), and A's list previews the last message as A's own.
    a.reload()
    expect(message(a, "Hello Bob!")).to_contain_text("Seen")
    expect(a.get_by_role("link", name=re.compile("^Bob"))).to_contain_text("You: Hello Bob!")
    expect(a.get_by_text("Online", exact=True)).to_be_visible()  # connected again: B's presence

    # Typing, then the message live; the indicator ends with it.
    a.get_by_role("textbox", name="Message").press_sequentially("How are", delay=30)
    typing = b.get_by_role("status").filter(has_text="Ann is typing…")
    expect(typing).to_be_visible()
    a.get_by_role("textbox", name="Message").press_sequentially(" you?")
    a.get_by_role("textbox", name="Message").press("Shift+Enter")
    a.get_by_role("textbox", name="Message").press_sequentially(":)")
    a.get_by_role("textbox", name="Message").press("Enter")
    expect(message(b, "How are you?\n:)")).to_be_visible()
    expect(typing).to_have_count(0)

    # B replies with the Send button; A reads it at once, B sees "Seen".
    b.get_by_role("textbox", name="Message").fill("Fine, thanks")
    b.get_by_role("button", name="Send").click()
    expect(message(a, "Fine, thanks")).to_be_visible()
    expect(message(b, "Fine, thanks")).to_contain_text("Seen")
    assert texts(a) == texts(b) == ["Hello Bob!", "How are you?\n:)", "Fine, thanks"]
    expect(a.get_by_role("link", name=re.compile("^Bob"))).to_have_attribute("aria-current", "page")
    screenshot(a, "chat-desktop")


def test_history_loads_on_scroll_keeping_the_view(
    web_cluster: WebCluster, web_user: UserFactory
) -> None:
    ann, bob = register(web_cluster.a, person("Ann")), register(web_cluster.a, person("Bob"))
    befriend(web_cluster.a, ann, bob)
    cid = direct(web_cluster.a, ann, bob)
    for n in range(1, 61):
        sender = ann if n % 2 else bob
        path = f"/conversations/{cid}/messages"
        rest(web_cluster.a, "POST", path, sender, text=f"message {n}", client_id=f"seed-{n}")

    b = web_user(web_cluster.b)
    sign_in(b, web_cluster.b, bob, f"#/chat/{cid}")
    expect(message(b, "message 60")).to_be_in_viewport()
    expect(message(b, "message 31")).to_be_attached()
    expect(message(b, "message 30")).to_have_count(0)

    # Scrolled to the top with the keyboard: the older page comes in above, and the message
    # that was at the top stays where it was.
    scroller = history(b)
    scroller.focus()
    scroller.press("Home")
    expect(message(b, "message 1")).to_be_attached()
    expect(message(b, "message 31")).to_be_in_viewport()
    expect(message(b, "message 1")).not_to_be_in_viewport()
    assert scroller.evaluate("el => el.scrollTop") > 0
    scroller.press("Home")
    expect(message(b, "message 1")).to_be_in_viewport()
    expect(scroller).to_contain_text("This is the beginning of the conversation.")
    assert texts(b) == [f"message {n}" for n in range(1, 61)]


def test_group_conversation(web_cluster: WebCluster, web_user: UserFactory) -> None:
    ann, bob, cy = (register(web_cluster.a, person(n)) for n in ("Ann", "Bob", "Cy"))
    befriend(web_cluster.a, ann, bob)
    befriend(web_cluster.a, ann, cy)
    a, b = web_user(web_cluster.a), web_user(web_cluster.b)
    sign_in(a, web_cluster.a, ann)
    sign_in(b, web_cluster.b, bob)

    # The dialog closes with Escape, giving the focus back.
    a.get_by_role("button", name="New group").click()
    dialog = a.get_by_role("dialog", name="New group")
    expect(dialog.get_by_label("Group name")).to_be_focused()
    a.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(a.get_by_role("button", name="New group")).to_be_focused()
    a.keyboard.press("Enter")
    expect(dialog.get_by_label("Group name")).to_be_focused()
    dialog.get_by_role("button", name="Create group").click()  # the name is required
    expect(dialog).to_be_visible()
    dialog.get_by_label("Group name").fill("Weekend trip")
    dialog.get_by_role("button", name="Create group").click()
    expect(dialog.get_by_role("alert")).to_have_text("Choose at least one friend.")
    dialog.get_by_role("checkbox", name=re.compile("^Bob")).check()
    dialog.get_by_role("button", name="Create group").click()
    expect(a.get_by_role("heading", name="Weekend trip")).to_be_visible()
    expect(a.get_by_text("Bob and you")).to_be_visible()
    send(a, "Who is in?")

    # B sees the new group appear in the list, live, and opens it.
    group = b.get_by_role("list", name="Conversations").get_by_role(
        "link", name=re.compile("^Weekend trip")
    )
    expect(group).to_contain_text("Ann: Who is in?")  # the preview names a group's sender
    group.click()
    expect(message(b, "Who is in?")).to_contain_text("Ann")
    expect(message(a, "Who is in?")).to_contain_text("Seen by Bob")
    send(b, "Me!")
    expect(message(a, "Me!")).to_contain_text("Bob")

    # Add members: only friends not in the group yet are offered.
    a.get_by_role("button", name="Add members").click()
    dialog = a.get_by_role("dialog", name="Add members")
    expect(dialog.get_by_role("checkbox")).to_have_count(1)
    dialog.get_by_role("checkbox", name=re.compile("^Cy")).check()
    dialog.get_by_role("button", name="Add").click()
    expect(dialog).to_be_hidden()
    expect(a.get_by_text("Bob, Cy and you")).to_be_visible()
    expect(a.get_by_role("button", name="Add members")).to_be_focused()
    members = rest(web_cluster.a, "GET", "/conversations", cy)["items"][0]["members"]
    assert {m["id"] for m in members} == {ann.id, bob.id, cy.id}


def test_offline_sends_are_kept_and_missed_messages_synced(
    web_cluster: WebCluster, web_user: UserFactory
) -> None:
    ann, bob = register(web_cluster.a, person("Ann")), register(web_cluster.a, person("Bob"))
    befriend(web_cluster.a, ann, bob)
    cid = direct(web_cluster.a, ann, bob)
    a, b = web_user(web_cluster.a), web_user(web_cluster.b)
    # A request the page started as the network went away fails, and Chromium says so in the
    # console (the nav's unread counts are re-read 0.3 s after each connect).
    allow_console_errors(b, r"net::ERR_INTERNET_DISCONNECTED")
    sign_in(a, web_cluster.a, ann, f"#/chat/{cid}")
    sign_in(b, web_cluster.b, bob, f"#/chat/{cid}")
    send(b, "see you")
    expect(message(a, "see you")).to_be_visible()

    b.context.set_offline(True)
    expect(b.get_by_text("Offline — messages will be sent when you're back")).to_be_visible()
    expect(a.get_by_text("Offline", exact=True)).to_be_visible()  # B's presence
    for text in ("one", "two", "three"):
        send(a, text)
        expect(message(a, text)).to_contain_text("Sent")
    send(b, "back soon")
    expect(message(b, "back soon")).to_contain_text("Sending…")
    expect(message(b, "one")).to_have_count(0)

    b.context.set_offline(False)
    expect(b.get_by_text("Offline — messages will be sent when you're back")).to_be_hidden()
    expect(message(b, "three")).to_be_visible()
    expect(message(b, "back soon")).to_contain_text(re.compile("Sent|Seen"))
    expect(message(a, "back soon")).to_be_visible()
    # Presence: A heard B go offline and come back (header and list).
    expect(a.get_by_text("Online", exact=True)).to_be_visible()
    expect(a.get_by_role("link", name=re.compile(r"^Bob\s*, online"))).to_be_visible()
    # One more round trip, so a duplicate of "back soon" would have arrived by now.
    send(b, "ok")
    expect(message(a, "ok")).to_be_visible()
    assert texts(b) == ["see you", "one", "two", "three", "back soon", "ok"]
    assert texts(a) == texts(b)
    stored = rest(web_cluster.a, "GET", f"/conversations/{cid}/messages", ann)["items"]
    assert [m["text"] for m in reversed(stored)] == texts(b)


def test_refused_message_can_be_retried_or_discarded(
    web_cluster: WebCluster, web_user: UserFactory
) -> None:
    ann, bob = register(web_cluster.a, person("Ann")), register(web_cluster.a, person("Bob"))
    befriend(web_cluster.a, ann, bob)
    cid = direct(web_cluster.a, ann, bob)
    a = web_user(web_cluster.a)
    sign_in(a, web_cluster.a, ann, f"#/chat/{cid}")
    expect(history(a)).to_contain_text("No messages yet")
    rest(web_cluster.a, "POST", "/blocks", bob, user_id=ann.id)

    send(a, "Are you there?")
    refused = message(a, "Are you there?")
    expect(refused).to_contain_text("Not sent: you cannot message this user")
    refused.get_by_role("button", name="Retry").click()
    expect(refused).to_contain_text("Not sent")
    refused.get_by_role("button", name="Discard").click()
    expect(refused).to_have_count(0)
    expect(history(a)).to_contain_text("No messages yet")


def test_phone_layout(web_cluster: WebCluster, web_user: UserFactory) -> None:
    ann, bob = register(web_cluster.a, person("Ann")), register(web_cluster.a, person("Bob"))
    befriend(web_cluster.a, ann, bob)
    cid = direct(web_cluster.a, ann, bob)
    lines = [
        "Are we still on for Saturday?",
        "Yes! Meet at the station at 10.",
        "https://example.org/a/very/long/link/that/should/wrap/instead/of/scrolling/sideways",
        "Supercalifragilisticexpialidocious" * 3,
    ]
    for n, text in enumerate(lines):
        sender = ann if n % 2 else bob
        rest(
            web_cluster.a,
            "POST",
            f"/conversations/{cid}/messages",
            sender,
            text=text,
            client_id=f"p{n}",
        )

    group = rest(web_cluster.a, "POST", "/conversations", ann, member_ids=[bob.id], title="Hikers")
    path = f"/conversations/{group['id']}/messages"
    rest(web_cluster.a, "POST", path, ann, text="Trail map attached", client_id="g1")

    b = web_user(web_cluster.b, phone=True)
    sign_in(b, web_cluster.b, bob)
    expect(b.get_by_role("link", name=re.compile("^Hikers"))).to_be_visible()
    expect(chat_link(b)).to_have_accessible_name("Chat 2 unread")
    conversation = b.get_by_role("link", name=re.compile("^Ann"))
    expect(conversation).to_be_visible()
    expect(history(b)).to_have_count(0)  # the list alone
    no_horizontal_scroll(b)
    screenshot(b, "chat-list-phone")

    conversation.click()
    expect(message(b, lines[3])).to_be_in_viewport()
    expect(b.get_by_role("heading", name="Chats")).to_be_hidden()  # the thread alone
    expect(b.get_by_role("heading", name="Ann", exact=True)).to_be_visible()
    send(b, "On my way!")
    expect(message(b, "On my way!")).to_contain_text("Sent")
    no_horizontal_scroll(b)
    box = history(b).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    screenshot(b, "chat-phone")

    b.get_by_role("link", name="Back").click()
    expect(b.get_by_role("heading", name="Chats")).to_be_visible()
    expect(history(b)).to_have_count(0)
