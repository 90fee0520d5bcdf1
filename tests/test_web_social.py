"""The web client's social screens (agora/web/static/screens/{feed,people,notifications,
search}.js and lib/posts.js) in Chromium: user A's browser on node a, B's on node b of a
two-node cluster, so every live frame crosses nodes. Driven by role and accessible name, as
assistive technology would, with Playwright's waiting assertions (no fixed sleeps).

Covered: signing up through the UI; finding a person ("Search people") and "Add friend"; the
request arriving live (the notification badge from hidden to 1) and "Accept"; a post with an
image and its alt text ("Add images", "Alt text for image 1", "Visibility", "Post"); the post
offered live to the friend as "1 new post" (never pushed into the list), the image loaded with
its alt; reactions ("Like" with aria-pressed, "More reactions"), comments and a reply (indented
under its parent, live for the one replied to); notifications grouped ("Cleo and Ben reacted to
your post"), opened to their subject and marked read, "Mark all as read"; search by a word and
by from:username; newest and top; the phone layout (no horizontal scroll); a keyboard-only sign
in and post; the profile: display name, bio, avatar, unfriend, add friend, cancel, block and
unblock (each confirmed), "Message"; deleting a post.

Screenshots (docs/screenshots/): signin-, feed-, profile-, notifications- and search-, each
-desktop and -phone.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from tests.support.browser import (
    UserFactory,
    WebCluster,
    browser_fixture,  # noqa: F401 (the fixture "browser")
    screenshot,
    web_cluster_fixture,  # noqa: F401 (the fixture "web_cluster")
    web_user_fixture,  # noqa: F401 (the fixture "web_user")
)
from tests.support.webapi import PASSWORD, User, befriend, log_in, person, register, rest

pytestmark = pytest.mark.slow

ALT = "A sunset over the harbour, orange and violet"


def picture(path: Path) -> Path:
    """A 640x400 PNG with a gradient (so its blurhash and thumbnail are not flat)."""
    horizontal = Image.linear_gradient("L").rotate(90).resize((640, 400))
    vertical = Image.linear_gradient("L").resize((640, 400))
    Image.merge("RGB", (vertical, Image.new("L", (640, 400), 90), horizontal)).save(path)
    return path


# -- the UI ---------------------------------------------------------------------------------


def nav(page: Page) -> Locator:
    return page.get_by_role("navigation", name="Main")


def sign_up(page: Page, base: str, user: User) -> None:
    page.goto(f"{base}/")
    page.get_by_role("button", name="I am new here").click()
    form = page.get_by_role("form", name="Create an account")
    form.get_by_label("Username").fill(user.username)
    form.get_by_label("Email").fill(f"{user.username}@example.org")
    form.get_by_label("Display name").fill(user.display_name)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Sign up").click()
    expect(nav(page)).to_be_visible()
    online(page)


def sign_in(page: Page, base: str, user: User) -> None:
    page.goto(f"{base}/")
    form = page.get_by_role("form", name="Sign in")
    form.get_by_label("Username").fill(user.username)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Sign in").click()
    expect(nav(page)).to_be_visible()
    online(page)


def online(page: Page) -> None:
    """The realtime socket is open (the top bar's connection state; it has no role)."""
    page.wait_for_function("() => document.querySelector('.connection')?.dataset.state === 'open'")


def go(page: Page, screen: str) -> None:
    nav(page).get_by_role("link", name=re.compile(rf"^{screen}\b")).click()


def post_card(page: Page, text: str) -> Locator:
    return page.get_by_role("article").filter(has_text=text)


def image_loaded(page: Page, img: Locator) -> None:
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle()
    )


def no_horizontal_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px phone"


def search(page: Page, query: str, expected: Locator) -> None:
    """Search for `query` until `expected` shows: the index may trail a post by a moment."""
    field = page.get_by_role("searchbox", name="Search", exact=True)
    for _ in range(20):
        field.fill(query)
        page.get_by_role("button", name="Search", exact=True).click()
        try:
            expect(expected).to_be_visible(timeout=500)
            return
        except AssertionError:
            continue
    expect(expected).to_be_visible()


def to_top(page: Page, element: Locator) -> None:
    """Scroll so that `element` starts just under the sticky top bar (for a screenshot)."""
    element.evaluate(
        """(el) => window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY
               - document.getElementById("top").offsetHeight - 8)"""
    )


def tab_to(page: Page, target: Locator, limit: int = 60) -> None:
    for _ in range(limit):
        if target.evaluate("el => el === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {target}")


# -- the tests ------------------------------------------------------------------------------


def test_friends_post_react_comment_notify_search(
    web_cluster: WebCluster, web_user: UserFactory, tmp_path: Path
) -> None:
    ann, ben, cleo = person("Ann Archer"), person("Ben Baker"), person("Cleo Carter")
    a = web_user(web_cluster.a)
    b = web_user(web_cluster.b)

    # Both sign up through the UI (the sign-in screen photographed first).
    a.goto(f"{web_cluster.a}/")
    expect(a.get_by_role("button", name="Sign in")).to_be_visible()
    screenshot(a, "signin-desktop")
    sign_up(a, web_cluster.a, ann)
    sign_up(b, web_cluster.b, ben)
    log_in(web_cluster.a, ann)
    log_in(web_cluster.b, ben)
    expect(nav(b).get_by_role("link", name="Notifications", exact=True)).to_be_visible()

    # A finds B and asks; B's badge goes from hidden to 1 and the request is on B's People.
    go(a, "People")
    a.get_by_label("Search people").fill(ben.username)
    # Other people whose names share a word may be found too (the suite's database is shared).
    found = (
        a.get_by_role("list", name="People found")
        .get_by_role("listitem")
        .filter(has_text=ben.username)
    )
    expect(found).to_have_count(1)
    found.get_by_role("button", name="Add friend").click()
    expect(found.get_by_role("button", name="Cancel")).to_be_visible()
    expect(nav(b).get_by_role("link", name="Notifications 1 unread")).to_be_visible()
    go(b, "People")
    requests_box = b.get_by_role("region", name="Friend requests")
    expect(requests_box.get_by_role("link", name=ann.display_name)).to_be_visible()
    requests_box.get_by_role("button", name="Accept").click()
    friends = b.get_by_role("region", name="Friends")
    expect(friends.get_by_role("link", name=ann.display_name)).to_be_visible()
    expect(requests_box).to_contain_text("No requests for now.")

    # Cleo, a friend of A's from a script, will react too (a grouped notification).
    register(web_cluster.a, cleo)
    befriend(web_cluster.a, cleo, ann)

    # B waits on the feed; A posts text and an image with its alt text, for friends.
    go(b, "Feed")
    expect(b.get_by_role("heading", name="Feed")).to_be_visible()
    go(a, "Feed")
    word = f"harbour{secrets.token_hex(3)}"
    text = f"Evening walk by the {word}, look at that sky"
    a.get_by_label("What's on your mind?").fill(text)
    a.get_by_label("Add images").set_input_files(picture(tmp_path / "sunset.png"))
    a.get_by_label("Alt text for image 1").fill(ALT)
    a.get_by_label("Visibility").select_option("friends")
    a.get_by_role("button", name="Post", exact=True).click()
    mine = post_card(a, word)
    expect(mine).to_be_visible()
    expect(a.get_by_label("What's on your mind?")).to_have_value("")
    post_id = mine.get_attribute("data-post")

    # B is offered it live ("1 new post"), the list untouched until B asks.
    fresh = b.get_by_role("button", name="1 new post")
    expect(fresh).to_be_visible()
    expect(post_card(b, word)).to_have_count(0)
    fresh.click()
    card = post_card(b, word)
    expect(card).to_be_visible()
    expect(fresh).to_be_hidden()
    img = card.get_by_role("img", name=ALT)
    expect(img).to_have_attribute("alt", ALT)
    image_loaded(b, img)
    expect(card).to_contain_text("Friends")

    # B reacts: Like (pressed), another reaction from the picker, then Like again.
    like = card.get_by_role("button", name="Like", exact=True)
    expect(like).to_have_attribute("aria-pressed", "false")
    like.click()
    expect(like).to_have_attribute("aria-pressed", "true")
    expect(card).to_contain_text("Reactions: 1 like")
    card.get_by_role("button", name="More reactions").click()
    card.get_by_role("button", name="Love").click()
    expect(like).to_have_attribute("aria-pressed", "false")
    expect(card.get_by_role("button", name="More reactions (yours: Love)")).to_be_visible()
    expect(card).to_contain_text("Reactions: 1 love")
    like.click()
    expect(like).to_have_attribute("aria-pressed", "true")
    expect(card).to_contain_text("Reactions: 1 like")

    # B comments.
    card.get_by_role("button", name="Comments (0)").click()
    card.get_by_label("Write a comment").fill("What a view!")
    card.get_by_role("button", name="Comment", exact=True).click()
    expect(card.get_by_role("button", name="Comments (1)")).to_be_visible()
    expect(card.get_by_role("listitem").filter(has_text="What a view!")).to_be_visible()

    # Cleo reacts (from a script): A's reactions become one group of two.
    rest(web_cluster.a, "PUT", f"/posts/{post_id}/reactions", cleo, type="love")

    # A's badge moved; the list is grouped, newest activity first, unread ones marked.
    expect(
        nav(a).get_by_role("link", name=re.compile(r"^Notifications [2-9] unread$"))
    ).to_be_visible()
    go(a, "Notifications")
    notes = a.get_by_role("list", name="Notifications")
    grouped = notes.get_by_role(
        "link", name=f"{cleo.display_name} and {ben.display_name} reacted to your post"
    )
    expect(grouped).to_be_visible()
    expect(grouped).to_contain_text("Unread:")
    commented = notes.get_by_role("link", name=f"{ben.display_name} commented on your post")
    expect(commented).to_be_visible()
    expect(
        notes.get_by_role("link", name=f"{ben.display_name} accepted your friend request")
    ).to_be_visible()
    screenshot(a, "notifications-desktop")

    # A opens the comment's notification: the post, comments open; A replies to B.
    commented.click()
    expect(a).to_have_url(re.compile(rf"#/feed\?post={post_id}$"))
    single = post_card(a, word)
    comment = single.get_by_role("listitem").filter(has_text="What a view!")
    comment.get_by_role("button", name="Reply").click()
    a.get_by_label(f"Reply to {ben.display_name}").fill("Thanks, it was even better live")
    a.get_by_role("button", name="Send reply").click()
    reply = comment.get_by_role("list").get_by_role("listitem").filter(has_text="even better live")
    expect(reply).to_be_visible()  # under its parent, in the parent's list of replies
    expect(single.get_by_role("button", name="Comments (2)")).to_be_visible()

    # B sees the reply live (B was notified of it; B's thread is open).
    b_comment = card.get_by_role("listitem").filter(has_text="What a view!")
    expect(b_comment.get_by_role("list").get_by_text("even better live")).to_be_visible()

    # Back on A's notifications: the one opened is read; "Mark all as read" reads the rest.
    go(a, "Notifications")
    expect(commented).not_to_contain_text("Unread:")
    a.get_by_role("button", name="Mark all as read").click()
    expect(grouped).not_to_contain_text("Unread:")
    expect(nav(a).get_by_role("link", name="Notifications", exact=True)).to_be_visible()

    # Search finds the post by a word and by from:username.
    go(a, "Search")
    results = a.get_by_role("list", name="Results")
    search(a, word, results.get_by_role("article").filter(has_text=word))
    expect(results.get_by_role("article").first.locator("mark")).to_have_text(word)
    search(a, f"from:{ann.username} {word}", results.get_by_role("article").filter(has_text=word))
    expect(a).to_have_url(re.compile(r"#/search\?q=from%3A.*&type=posts$"))
    screenshot(a, "search-desktop")

    # Newest and top: a newer post with nothing on it comes first in Newest, after the
    # commented and reacted one in Top.
    plain = f"Just a quiet note {secrets.token_hex(3)}"
    rest(web_cluster.a, "POST", "/posts", ann, text=plain, visibility="friends")
    expect(b.get_by_role("button", name="1 new post")).to_be_visible()
    b.get_by_role("button", name="Top").click()
    expect(b.get_by_role("button", name="Top")).to_have_attribute("aria-pressed", "true")
    expect(b.get_by_role("article").first).to_contain_text(word)
    expect(post_card(b, plain)).to_be_visible()
    b.get_by_role("button", name="Newest").click()
    expect(b.get_by_role("article").first).to_contain_text(plain)

    # The feed after all that, as A sees it (the post with its thread open, at the top).
    go(a, "Feed")
    card = post_card(a, word)
    image_loaded(a, card.get_by_role("img", name=ALT))
    card.get_by_role("button", name="Comments (2)").click()
    expect(card.get_by_text("even better live")).to_be_visible()
    to_top(a, card)
    screenshot(a, "feed-desktop")
    rendered = a.evaluate("performance.getEntriesByName('agora:rendered:feed')[0]?.startTime")
    assert rendered is not None and rendered > 0
    print(f"feed: first render {rendered:.0f} ms after navigation start")

    # A phone: B on node b; every screen fits 390 px.
    phone = web_user(web_cluster.b, phone=True)
    phone.goto(f"{web_cluster.b}/")
    expect(phone.get_by_role("button", name="Sign in")).to_be_visible()
    no_horizontal_scroll(phone)
    screenshot(phone, "signin-phone")
    sign_in(phone, web_cluster.b, ben)
    expect(post_card(phone, word).get_by_role("img", name=ALT)).to_be_visible()
    image_loaded(phone, post_card(phone, word).get_by_role("img", name=ALT))
    no_horizontal_scroll(phone)
    to_top(phone, post_card(phone, word))
    screenshot(phone, "feed-phone")
    phone.goto(f"{web_cluster.b}/#/people/{ann.id}")
    expect(phone.get_by_role("heading", name=ann.display_name, level=1)).to_be_visible()
    expect(phone.get_by_role("button", name="Message")).to_be_visible()
    expect(post_card(phone, word)).to_be_visible()
    no_horizontal_scroll(phone)
    screenshot(phone, "profile-phone")
    go(phone, "Notifications")
    expect(
        phone.get_by_role("link", name=f"{ann.display_name} replied to your comment")
    ).to_be_visible()
    no_horizontal_scroll(phone)
    screenshot(phone, "notifications-phone")
    go(phone, "Search")
    search(phone, word, phone.get_by_role("list", name="Results").get_by_role("article"))
    no_horizontal_scroll(phone)
    screenshot(phone, "search-phone")


def test_keyboard_only_sign_in_and_post(web_cluster: WebCluster, web_user: UserFactory) -> None:
    dana = register(web_cluster.a, person("Dana Dunn"))
    page = web_user(web_cluster.a)
    page.goto(f"{web_cluster.a}/")
    form = page.get_by_role("form", name="Sign in")
    expect(form.get_by_label("Username")).to_be_focused()
    page.keyboard.type(dana.username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(nav(page)).to_be_visible()

    # Ctrl+Enter in the composer posts.
    composer = page.get_by_label("What's on your mind?")
    tab_to(page, composer)
    page.keyboard.type("Typed without a mouse")
    page.keyboard.press("Control+Enter")
    expect(post_card(page, "Typed without a mouse")).to_be_visible()
    expect(composer).to_be_focused()
    expect(composer).to_have_value("")

    # So does Tab to "Post" and Enter.
    page.keyboard.type("And posted with Enter on the button")
    tab_to(page, page.get_by_role("button", name="Post", exact=True))
    page.keyboard.press("Enter")
    expect(post_card(page, "posted with Enter")).to_be_visible()

    # Escape closes the reaction picker and gives the focus back.
    more = post_card(page, "posted with Enter").get_by_role("button", name="More reactions")
    tab_to(page, more)
    page.keyboard.press("Enter")
    expect(post_card(page, "posted with Enter").get_by_role("button", name="Love")).to_be_focused()
    page.keyboard.press("Escape")
    expect(more).to_be_focused()
    expect(more).to_have_attribute("aria-expanded", "false")


def test_profile_edit_friend_actions_and_delete(
    web_cluster: WebCluster, web_user: UserFactory, tmp_path: Path
) -> None:
    eve, finn = (
        register(web_cluster.a, person("Eve Ellis")),
        register(web_cluster.b, person("Finn Ford")),
    )
    befriend(web_cluster.a, finn, eve)
    rest(web_cluster.b, "POST", "/posts", finn, text="Finn's first post", visibility="friends")
    page = web_user(web_cluster.a)
    sign_in(page, web_cluster.a, eve)

    # Eve's own profile: a post, then bio and avatar.
    page.get_by_label("What's on your mind?").fill("Hello from Eve's profile")
    page.get_by_role("button", name="Post", exact=True).click()
    expect(post_card(page, "Hello from Eve's profile")).to_be_visible()
    page.get_by_role("banner").get_by_role("link", name=eve.display_name).click()
    expect(page.get_by_role("heading", name=eve.display_name, level=1)).to_be_visible()
    edit = page.get_by_role("button", name="Edit profile")
    expect(page.get_by_label("Bio")).to_be_hidden()
    edit.click()
    expect(edit).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_label("Display name")).to_be_focused()
    page.get_by_label("Avatar").set_input_files(picture(tmp_path / "me.png"))
    expect(page.get_by_role("status").filter(has_text="Avatar updated.")).to_be_visible()
    page.get_by_label("Display name").fill("Eve E. Ellis")
    page.get_by_label("Bio").fill("Walks, photos, and long breakfasts.")
    page.get_by_role("button", name="Save profile").click()
    expect(page.get_by_role("heading", name="Eve E. Ellis", level=1)).to_be_visible()
    expect(page.get_by_role("region", name="Eve E. Ellis")).to_contain_text("long breakfasts")
    expect(page.get_by_role("banner").get_by_role("link", name="Eve E. Ellis")).to_be_visible()
    expect(post_card(page, "Hello from Eve's profile")).to_be_visible()
    edit.click()
    expect(page.get_by_label("Bio")).to_be_hidden()
    expect(page.get_by_role("status").get_by_text("Profile saved.")).to_be_hidden(timeout=10_000)
    screenshot(page, "profile-desktop")

    # Delete a post: asked first; Cancel keeps it.
    own = post_card(page, "Hello from Eve's profile")
    own.get_by_role("button", name="Delete post").click()
    own.get_by_role("button", name="Cancel").click()
    expect(own.get_by_role("button", name="Delete post")).to_be_focused()
    own.get_by_role("button", name="Delete post").click()
    own.get_by_role("button", name="Yes, delete").click()
    expect(post_card(page, "Hello from Eve's profile")).to_have_count(0)

    # Finn's profile, from Eve's friends: unfriend, ask again, cancel, block, unblock.
    go(page, "People")
    page.get_by_role("region", name="Friends").get_by_role("link", name=finn.display_name).click()
    expect(page.get_by_role("heading", name=finn.display_name, level=1)).to_be_visible()
    expect(post_card(page, "Finn's first post")).to_be_visible()
    page.get_by_role("button", name="Unfriend").click()
    page.get_by_role("button", name="Yes, unfriend").click()
    add = page.get_by_role("button", name="Add friend")
    expect(add).to_be_visible()
    expect(add).to_be_focused()
    add.click()
    expect(page.get_by_text("Request sent")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()
    expect(add).to_be_visible()
    page.get_by_role("button", name="Block").click()
    page.get_by_role("button", name="Yes, block").click()
    expect(page.get_by_text(f"You blocked {finn.display_name}")).to_be_visible()
    expect(post_card(page, "Finn's first post")).to_have_count(0)
    page.get_by_role("button", name="Unblock").click()
    expect(page.get_by_role("button", name="Add friend")).to_be_visible()

    # Friends again (Finn accepts Eve's request): "Message" opens the direct conversation.
    page.get_by_role("button", name="Add friend").click()
    expect(page.get_by_text("Request sent")).to_be_visible()
    incoming = rest(web_cluster.b, "GET", "/friends/requests?direction=incoming", finn)["items"]
    rest(web_cluster.b, "POST", f"/friends/requests/{incoming[0]['id']}/accept", finn)
    page.reload()
    page.get_by_role("button", name="Message").click()
    expect(page).to_have_url(re.compile(r"#/chat/\d+$"))
