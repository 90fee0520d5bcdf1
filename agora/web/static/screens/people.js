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

/** What each user is to me (no API field says): friend, incoming, outgoing, blocked, none. */
async function relations() {
  const [incoming, outgoing, blocks, friends] = await Promise.all([all("/friends/requests", { direction: "incoming" }),
    all("/friends/requests", { direction: "outgoing" }), all("/blocks"), all("/friends")]);
  const map = new Map(friends.map((f) => [f.user.id, { kind: "friend", since: f.since }]));
  incoming.forEach((request) => map.set(request.from_user.id, { kind: "incoming", request }));
  outgoing.forEach((request) => map.set(request.to_user.id, { kind: "outgoing", request }));
  blocks.forEach((b) => map.set(b.user.id, { kind: "blocked", user: b.user }));
  return { incoming, outgoing, blocks, of: (id) => (id === currentUser().id ? { kind: "self" } : map.get(id) || { kind: "none" }) };
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

function friendActions(user, rel, done) {
  const id = rel.request && rel.request.id;
  return {
    none: () => act("Add friend", () => post("/friends/requests", { user_id: user.id }), done, "primary"),
    incoming: () => [act("Accept", () => post(`/friends/requests/${id}/accept`), done, "primary"),
      act("Decline", () => post(`/friends/requests/${id}/decline`), done)],
    outgoing: () => [h("span", { class: "muted" }, "Request sent"), act("Cancel", () => del(`/friends/requests/${id}`), done)],
    friend: () => h("span", { class: "muted" }, "Friends"),
    blocked: () => act("Unblock", () => del(`/blocks/${user.id}`), done),
    self: () => h("span", { class: "muted" }, "You"),
  }[rel.kind]();
}

function personRow(user, extra = null, actions = null) {
  return h("li", { class: "person" }, avatar(user),
    h("div", { class: "person-name" }, userLink(user), h("span", { class: "muted" }, `@${user.username}`), extra),
    h("div", { class: "row actions" }, actions));
}

async function index(main, _, view) {
  let rels = await relations();
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
  const row = (user, extra) => personRow(user, extra, friendActions(user, rels.of(user.id), refresh));
  main.append(h("h1", null, "People"), search, requests, mine, blocked);

  function find() {
    const text = q.value.trim();
    searching?.stop();
    results.replaceChildren();
    searching = text ? pager(results, (cursor) => get("/search", { q: text, type: "users", cursor }), (r) => row(r.user), "No one by that name.") : null;
  }
  function draw() {
    fill(requests, h("h2", { id: "requests-title" }, "Friend requests"),
      rels.incoming.length ? h("ul", { class: "list" }, rels.incoming.map((r) => row(r.from_user, when(r.created_at))))
        : h("p", { class: "muted" }, "No requests for now."),
      rels.outgoing.length > 0 && [h("h3", null, "Sent"), h("ul", { class: "list" }, rels.outgoing.map((r) => row(r.to_user, when(r.created_at))))]);
    const list = h("ul", { class: "list" });
    fill(mine, h("h2", { id: "friends-title" }, "Friends"), list);
    friends?.stop();
    friends = pager(list, (cursor) => get("/friends", { cursor }), (f) => personRow(f.user, h("span", { class: "muted" }, ` · since ${day(f.since)}`)),
      "No friends yet: find people you know above.");
    blocked.hidden = !rels.blocks.length;
    fill(blocked, h("h2", { id: "blocked-title" }, "Blocked"), h("ul", { class: "list" }, rels.blocks.map((b) => row(b.user))));
    return friends.first;
  }
  async function refresh() {
    rels = await relations();
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

async function profile(main, id, view) {
  let rel = (await relations()).of(id);
  const mine = rel.kind === "self";
  const user = rel.kind === "blocked" ? rel.user : await get(mine ? "/users/me" : `/users/${id}`);
  const head = h("section", { class: "card profile", "aria-labelledby": "profile-name" });
  const actions = h("div", { class: "row actions" });
  const body = h("div");
  const drawHead = (u) => fill(head, h("div", { class: "profile-top" }, avatar(u, "large"),
    h("div", null, h("h1", { id: "profile-name", tabindex: "-1" }, nameOf(u)),
      h("p", { class: "muted" }, `@${u.username} · joined ${day(u.created_at)}`), u.bio && h("p", { class: "bio" }, u.bio))),
  actions);

  async function done() {
    const was = rel.kind;
    rel = (await relations()).of(id);
    if ((was === "blocked") !== (rel.kind === "blocked")) {
      // blocked or unblocked: all of it changes
      view.stops.forEach((stop) => stop());
      main.replaceChildren();
      await profile(main, id, view);
      return main.querySelector("h1").focus();
    }
    drawActions();
    actions.querySelector("button")?.focus();
  }
  function drawActions() {
    const name = nameOf(user);
    const ask = (label, question, yes, call) => btn({ class: label === "Block" ? "danger" : "",
      onclick: (e) => confirming(e.currentTarget, question, yes, () => call().then(done)) }, label);
    const status = { friend: `You are friends since ${day(rel.since)}.`, incoming: `${name} asked to be your friend.`,
      blocked: `You blocked ${name}: neither of you sees the other.` }[rel.kind];
    fill(actions, status && h("p", { class: "rel-status muted" }, status),
      rel.kind === "friend" ? [btn({ class: "primary", onclick: () => message(id) }, "Message"),
        ask("Unfriend", `Unfriend ${name}?`, "Yes, unfriend", () => del(`/friends/${id}`))]
        : !mine && friendActions(user, rel, done),
      !mine && rel.kind !== "blocked" && ask("Block", `Block ${name}?`, "Yes, block", () => post("/blocks", { user_id: id })));
  }
  view.refresh = () => !mine && relations().then((r) => { rel = r.of(id); drawActions(); });
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
  if (rel.kind === "blocked") return;

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
