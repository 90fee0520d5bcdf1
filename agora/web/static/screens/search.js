// Search (#/search?q=...&type=users|posts|messages): "Search", the People/Posts/Messages tabs, a
// line on the query syntax, results with infinite scroll (people link to profiles, posts are
// cards with the matches marked, messages link to their conversation). A search goes into the
// URL (the router redraws this screen), so Back returns to the one before.

import { h, avatar, userLink, when, showError } from "../lib/dom.js";
import { get } from "../lib/api.js";
import { postCard, pager, snippet, btn } from "../lib/posts.js";

const TYPES = { users: "People", posts: "Posts", messages: "Messages" };
let refocus = null; // what had the focus when the URL changed

function result(r) {
  if (r.type === "post") return h("li", null, postCard(r.post, { highlight: r.snippet }));
  if (r.type === "user") return h("li", { class: "person" }, avatar(r.user), userLink(r.user), h("span", { class: "muted" }, `@${r.user.username}`));
  return h("li", { class: "card hit" }, h("div", { class: "row" }, avatar(r.sender, "small"), userLink(r.sender), when(r.message.created_at)),
    h("a", { href: `#/chat/${r.message.conversation_id}`, class: "snippet" }, snippet(r.snippet)));
}

export default async function render(main, params) {
  const type = TYPES[params.query.get("type")] ? params.query.get("type") : "posts";
  const text = (params.query.get("q") || "").trim();
  const q = h("input", { type: "search", maxLength: 200, autocomplete: "off", "aria-describedby": "search-help", value: text });
  const go = (kind, focus) => {
    refocus = focus;
    const hash = `#/search?${new URLSearchParams(q.value.trim() ? { q: q.value.trim(), type: kind } : { type: kind })}`;
    if (location.hash === hash) run(); // the same search again (the router would not redraw)
    else location.hash = hash;
  };
  const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Search in" }, Object.entries(TYPES).map(([kind, label]) =>
    btn({ value: kind, "aria-pressed": kind === type, onclick: () => go(kind, kind) }, label)));
  const form = h("form", { class: "card", role: "search", "aria-label": "Search Agora", onsubmit: (e) => { e.preventDefault(); go(type, "q"); } },
    h("div", { class: "row search-row" }, h("label", { class: "field grow" }, h("span", null, "Search"), q),
      h("button", { type: "submit", class: "primary" }, "Search")),
    tabs,
    h("p", { id: "search-help", class: "muted help" },
      "All words must match. Also: \"a phrase\", -word to leave out, from:username, after:2024-01-31, before:2024-02-01, has:media."));
  const results = h("ul", { class: `results list${type === "users" ? " card" : ""}`, "aria-label": "Results" });
  main.append(h("h1", null, "Search"), form, h("h2", { class: "sr-only", "aria-live": "polite" }, text && `${TYPES[type]} matching ${text}`), results);
  (refocus === "q" || !text ? q : tabs.querySelector(`[value="${refocus}"]`))?.focus();
  refocus = null;
  let paging = null;
  async function run() {
    paging?.stop();
    results.replaceChildren();
    form.querySelector(".form-error")?.remove();
    paging = text ? pager(results, (cursor) => get("/search", { q: text, type, cursor }).catch((error) => {
      if (error.status === 400 || error.status === 422) showError(form, error);
      throw error;
    }), result, `No ${TYPES[type].toLowerCase()} match “${text}”.`) : null;
    await paging?.first;
  }
  await run();
  return () => paging?.stop();
}
