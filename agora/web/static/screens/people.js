// People. #/people: "Search people", friend requests (accept, decline; cancel those I sent), my
// friends, who I blocked. #/people/<id>: a profile, what we are to each other and its actions
// (add friend, accept, unfriend, block, message), their posts and friends; on mine, "Edit
// profile" (display name, bio, avatar). Friend requests and acceptances redraw it live.

import { h, fill, toast, avatar, userLink, when, showError } from "../lib/dom.js";
import { get, post, patch, del, upload } from "../lib/api.js";
import { currentUser, updateMe } from "../lib/auth.js";
import { realtime } from "../lib/socket.js";
import { postCard, pager, confirming, nameOf, btn } from "../lib/posts.js";

const day = (iso) => new Date(iso).toLocaleDateString(undefined, { dateStyle: "medium" });
const muted = (text) => h("span", { class: "muted" }, text);

export default async function render(main, params) {
  const view = { stops: [], refresh: null };
  const off = realtime.on("notification", ({ notification: n }) => /^friend_/.test(n.kind) && view.refresh?.());
  await (params.id ? profile : index)(main, params.id, view);
  return () => {
    off();
    view.stops.forEach((stop) => stop());
  };
}

/** Every page of a list. */
async function all(path, query) {
  const items = [];
  let cursor = null;
  do {
    const page = await get(path, { ...query, limit: 100, cursor });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < 5000);
  return items;
}

/** [user, relationship]; one I block is 404 (hidden both ways) but on my /blocks. */
const lookup = (id) => get(`/users/${id}`).then((user) => [user, user.relationship || {}], async (error) => {
  const block = error.status === 404 && (await all("/blocks")).find((b) => b.user.id === id);
  if (!block) throw error;
  return [block.user, { blocking: true }];
});

/** Search results, each with rel (none for me). */
async function related(page) {
  const { items } = await get("/users/relationships", { ids: page.items.map((r) => r.user.id).join() });
  page.items.forEach((r) => (r.rel = items.find((x) => x.id === r.user.id)));
  return page;
}

/** A button running an API call, then done(); errors become a toast. */
function act(label, call, done, cls = "") {
  return btn({ class: cls, onclick: async (e) => {
    const button = e.currentTarget;
    button.disabled = true;
    try {
      await call();
      await done();
    } catch (error) {
      toast(error.message, "error");
      button.disabled = false;
    }
  } }, label);
}

/** The actions a relationship allows (none: "You" on mine). */
function friendActions(user, rel, done) {
  if (!rel) return user.id === currentUser().id && muted("You");
  const { incoming_request_id: id, outgoing_request_id: mine } = rel;
  return rel.blocking ? act("Unblock", () => del(`/blocks/${user.id}`), done)
    : rel.friends ? muted("Friends")
    : id ? [act("Accept", () => post(`/friends/requests/${id}/accept`), done, "primary"), act("Decline", () => post(`/friends/requests/${id}/decline`), done)]
    : mine ? [muted("Request sent"), act("Cancel", () => del(`/friends/requests/${mine}`), done)]
    : act("Add friend", () => post("/friends/requests", { user_id: user.id }), done, "primary");
}

function personRow(user, extra, actions) {
  return h("li", { class: "person" }, avatar(user),
    h("div", { class: "person-name" }, userLink(user), muted(`@${user.username}`), extra),
    h("div", { class: "row actions" }, actions));
}

async function index(main, _, view) {
  const lists = () => Promise.all(["incoming", "outgoing", ""].map((d) => all(d ? "/friends/requests" : "/blocks", { direction: d })));
  let [incoming, outgoing, blocks] = await lists();
  let searching = null;
  let friends = null;
  let timer = null;
  const q = h("input", { type: "search", autocomplete: "off", maxLength: 200 });
  const results = h("ul", { class: "list people", "aria-label": "People found" });
  const search = h("form", { class: "card", role: "search", "aria-label": "Find people" },
    h("div", { class: "row search-row" }, h("label", { class: "field grow" }, h("span", null, "Search people"), q),
      h("button", { type: "submit", class: "primary" }, "Search")), results);
  const section = (id) => h("section", { class: "card", "aria-labelledby": id });
  const requests = section("requests-title");
  const mine = section("friends-title");
  const blocked = section("blocked-title");
  const row = (user, extra, rel) => personRow(user, extra, friendActions(user, rel, refresh));
  main.append(h("h1", null, "People"), search, requests, mine, blocked);

  function find() {
    const text = q.value.trim();
    searching?.stop();
    results.replaceChildren();
    searching = text ? pager(results, (cursor) => get("/search", { q: text, type: "users", cursor }).then(related), (r) => row(r.user, null, r.rel), "No one by that name.") : null;
  }
  function draw() {
    fill(requests, h("h2", { id: "requests-title" }, "Friend requests"),
      incoming.length ? h("ul", { class: "list" }, incoming.map((r) => row(r.from_user, when(r.created_at), { incoming_request_id: r.id })))
        : h("p", { class: "muted" }, "No requests for now."),
      outgoing.length > 0 && [h("h3", null, "Sent"), h("ul", { class: "list" }, outgoing.map((r) => row(r.to_user, when(r.created_at), { outgoing_request_id: r.id })))]);
    const list = h("ul", { class: "list" });
    fill(mine, h("h2", { id: "friends-title" }, "Friends"), list);
    friends?.stop();
    friends = pager(list, (cursor) => get("/friends", { cursor }), (f) => personRow(f.user, muted(` · since ${day(f.since)}`)),
      "No friends yet: find people you know above.");
    blocked.hidden = !blocks.length;
    fill(blocked, h("h2", { id: "blocked-title" }, "Blocked"), h("ul", { class: "list" }, blocks.map((b) => row(b.user, null, { blocking: true }))));
    return friends.first;
  }
  async function refresh() {
    [incoming, outgoing, blocks] = await lists();
    find();
    await draw();
    if (!document.activeElement || document.activeElement === document.body) q.focus();
  }
  search.addEventListener("submit", (e) => {
    e.preventDefault();
    find();
  });
  q.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(find, 300);
  });
  view.refresh = refresh;
  view.stops.push(() => clearTimeout(timer), () => searching?.stop(), () => friends?.stop());
  await draw();
}

async function profile(main, id, view, known) {
  let [user, rel] = known || await lookup(id);
  const mine = id === currentUser().id;
  const head = h("section", { class: "card profile", "aria-labelledby": "profile-name" });
  const actions = h("div", { class: "row actions" });
  const body = h("div");
  const drawHead = (u) => fill(head, h("div", { class: "profile-top" }, avatar(u, "large"),
    h("div", null, h("h1", { id: "profile-name", tabindex: "-1" }, nameOf(u)),
      h("p", { class: "muted" }, `@${u.username} · joined ${day(u.created_at)}`), u.bio && h("p", { class: "bio" }, u.bio))),
  actions);

  async function done(block) {
    const was = rel.blocking;
    [user, rel] = block ? [block.user, { blocking: true }] : await lookup(id);
    if (was !== rel.blocking) {
      // blocked or unblocked: all of it changes
      view.stops.forEach((stop) => stop());
      main.replaceChildren();
      await profile(main, id, view, [user, rel]);
      return main.querySelector("h1").focus();
    }
    drawActions();
    actions.querySelector("button")?.focus();
  }
  function drawActions() {
    const name = nameOf(user);
    const ask = (label, question, yes, call) => btn({ class: label === "Block" ? "danger" : "",
      onclick: (e) => confirming(e.currentTarget, question, yes, () => call().then(done)) }, label);
    const status = rel.blocking ? `You blocked ${name}: neither of you sees the other.` : rel.friends ? "You are friends."
      : rel.incoming_request_id && `${name} asked to be your friend.`;
    fill(actions, status && h("p", { class: "rel-status muted" }, status),
      rel.friends ? [btn({ class: "primary", onclick: () => message(id) }, "Message"),
        ask("Unfriend", `Unfriend ${name}?`, "Yes, unfriend", () => del(`/friends/${id}`))]
        : !mine && friendActions(user, rel, done),
      !mine && !rel.blocking && ask("Block", `Block ${name}?`, "Yes, block", () => post("/blocks", { user_id: id })));
  }
  view.refresh = () => !mine && !rel.blocking && lookup(id).then(([, r]) => { rel = r; drawActions(); });
  drawHead(user);
  drawActions();
  main.append(head);
  if (mine) {
    const form = editForm(user, drawHead);
    const edit = btn({ "aria-expanded": "false", onclick: () => {
      form.hidden = !form.hidden;
      edit.setAttribute("aria-expanded", !form.hidden);
      if (!form.hidden) form.querySelector("input").focus();
    } }, "Edit profile");
    form.hidden = true;
    form.addEventListener("keydown", (e) => e.key === "Escape" && (edit.click(), edit.focus()));
    actions.append(edit);
    main.append(form);
  }
  if (rel.blocking) return;

  const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Show" },
    btn({ value: "posts", onclick: (e) => show(e.currentTarget.value) }, "Posts"),
    btn({ value: "friends", onclick: (e) => show(e.currentTarget.value) }, "Friends"));
  function show(which) {
    for (const b of tabs.children) b.setAttribute("aria-pressed", b.value === which);
    view.stops.forEach((stop) => stop());
    const posts = which === "posts";
    const list = fill(body, posts ? h("div", { class: "posts", role: "feed", "aria-label": `Posts by ${nameOf(user)}` }) : h("ul", { class: "list card" })).firstChild;
    const pages = posts
      ? pager(list, (cursor) => get(`/users/${id}/posts`, { cursor }), (p) => postCard(p), mine ? "You have not posted yet." : "No posts you may see.")
      : pager(list, (cursor) => get(`/users/${id}/friends`, { cursor }), (f) => personRow(f.user), "No friends to show.");
    view.stops = [pages.stop];
    return pages.first;
  }
  main.append(tabs, body);
  await show("posts");
}

/** Open (or make) the direct conversation with a friend and go there. */
async function message(id) {
  try {
    location.hash = `#/chat/${(await post("/conversations", { member_ids: [id] })).id}`;
  } catch (error) {
    toast(error.message, "error");
  }
}

/** Mine: "Display name", "Bio", "Save profile"; "Avatar" (uploaded when chosen). */
function editForm(me, redraw) {
  const field = (label, input) => h("label", { class: "field" }, h("span", null, label), input);
  const name = h("input", { maxLength: 100, autocomplete: "name", value: me.display_name || "" });
  const bio = h("textarea", { maxLength: 2000, rows: 3 }, me.bio || "");
  const file = h("input", { type: "file", accept: "image/jpeg,image/png,image/gif,image/webp" });
  const form = h("form", { class: "card", "aria-label": "Your profile" },
    field("Display name", name), field("Bio", bio), field("Avatar", file), h("button", { type: "submit", class: "primary" }, "Save profile"));
  async function save(change, message) {
    try {
      const out = await patch("/users/me", await change());
      updateMe(out);
      redraw(out);
      toast(message);
      form.querySelector(".form-error")?.remove();
    } catch (error) {
      showError(form, error);
    }
  }
  file.addEventListener("change", async () => {
    if (file.files.length) await save(async () => ({ avatar_media_id: (await upload(file.files[0], "Profile picture")).id }), "Avatar updated.");
    file.value = "";
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    save(() => ({ display_name: name.value.trim(), bio: bio.value.trim() }), "Profile saved.");
  });
  return form;
}
