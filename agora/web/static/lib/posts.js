// Post cards (feed, profiles, search): text, images (blurhash until loaded, sized so nothing
// moves), reactions (optimistic), comments with replies (live while open). And what the social
// screens share: an infinite-scroll pager, a confirm step, search snippets.

import { h, fill, when, avatar, userLink, toast, showError, whenVisible } from "./dom.js";
import { get, put, post, del } from "./api.js";
import { currentUser } from "./auth.js";
import { realtime } from "./socket.js";
import { blurhashURL } from "./blurhash.js";

const REACTIONS = { like: "👍", love: "❤️", haha: "😂", wow: "😮", sad: "😢", angry: "😠" };
const SEEN_AS = { public: "Public", friends: "Friends", private: "Only me" };
const threads = new Map(); // post id -> refresh of its open thread

// A comment or reply notified to me, on a thread I have open: show it now.
realtime.on("notification", ({ notification: n }) => threads.has(n.post_id) && threads.get(n.post_id)());

export const nameOf = (user) => user.display_name || user.username;
export const btn = (props, ...children) => h("button", { type: "button", ...props }, ...children);
const title = (type) => type[0].toUpperCase() + type.slice(1);

/** Infinite scroll: load(cursor) -> page; draw(item) -> element|null. -> {first: drawn, stop} */
export function pager(list, load, draw, empty) {
  const end = h("div", { class: "list-end muted" });
  let cursor = null;
  let alive = true;
  let unwatch = () => {};
  list.after(end);
  async function more() {
    unwatch();
    end.textContent = "Loading…";
    let page;
    try {
      page = await load(cursor);
    } catch (error) {
      if (alive) fill(end, error.message, " ", btn({ onclick: more }, "Try again"));
      return;
    }
    if (!alive) return;
    for (const el of page.items.map(draw)) if (el) list.append(el);
    cursor = page.next_cursor;
    end.textContent = cursor || list.children.length ? "" : empty;
    if (cursor) unwatch = whenVisible(end, more);
  }
  return { first: more(), stop: () => { alive = false; unwatch(); end.remove(); } };
}

/** A destructive button's second step in its place: "Delete this post?" [yes] [Cancel] */
export function confirming(button, question, yes, action) {
  const back = () => { row.replaceWith(button); button.focus(); };
  const row = h("span", { class: "confirm row", role: "group", "aria-label": question, onkeydown: (e) => e.key === "Escape" && back() },
    question,
    btn({ class: "danger", onclick: (e) => {
      e.currentTarget.disabled = true;
      action().catch((error) => { toast(error.message, "error"); back(); });
    } }, yes),
    btn({ onclick: back }, "Cancel"));
  button.replaceWith(row);
  row.querySelector("button").focus();
}

/** A search snippet (escaped text, <mark> around matches) as nodes, never parsed as HTML. */
export function snippet(html) {
  let marked = false;
  return html.split(/(<\/?mark>)/).map((part) => {
    if (/^<\/?mark>$/.test(part)) return void (marked = part === "<mark>");
    const text = part.replace(/&(amp|lt|gt|quot|#x27);/g, (_, e) => ({ amp: "&", lt: "<", gt: ">", quot: '"' })[e] || "'");
    return marked ? h("mark", null, text) : text;
  });
}

/** A post as an <article>. opts: {open: comments shown at once, highlight: search snippet, onDelete} */
export function postCard(p, opts = {}) {
  const me = currentUser();
  const marked = opts.highlight && snippet(opts.highlight);
  const remove = () => confirming(removeButton, "Delete this post?", "Yes, delete", async () => {
    await del(`/posts/${p.id}`);
    (card.nextElementSibling || document.getElementById("main")).focus();
    card.remove();
    toast("Post deleted.");
    if (opts.onDelete) opts.onDelete(p);
  });
  const removeButton = me && p.author.id === me.id && btn({ class: "ghost danger", onclick: remove }, "Delete post");
  const card = h("article", { class: "card post", tabindex: "-1", dataset: { post: p.id }, "aria-label": `Post by ${nameOf(p.author)}` },
    h("header", { class: "post-head" }, avatar(p.author),
      h("div", { class: "post-meta" }, userLink(p.author),
        h("span", { class: "muted" }, h("a", { href: `#/feed?post=${p.id}`, class: "stamp" }, when(p.created_at)), ` · ${SEEN_AS[p.visibility]}`)),
      removeButton),
    p.held && h("p", { class: "held" }, "Held for review: only you see it until a moderator publishes it."),
    // the snippet marks the matches when it holds the whole text
    h("div", { class: "post-text" }, marked && h("div", null, marked).textContent === p.text ? marked : p.text),
    p.media.length > 0 && h("div", { class: `gallery n${p.media.length}` }, p.media.map((m) => image(m, p.media.length === 1))),
    reactions(p),
    comments(p, opts.open));
  return card;
}

/** An image link: its blurhash behind it until it loads, the box shaped from width/height. */
function image(m, alone) {
  const ratio = m.width / m.height || 1;
  const box = h("a", { class: "shot", href: m.url, target: "_blank", rel: "noopener", "aria-label": `${m.description || "Image"} (full size)` });
  const img = h("img", { class: "loading", alt: m.description || "", width: m.width, height: m.height,
    onload: () => { img.classList.remove("loading"); box.style.backgroundImage = ""; },
    onerror: () => box.classList.add("broken") });
  if (alone) {
    // its own shape (within 4:5 and 12:5), at most 30rem tall, not blown up much
    const shape = Math.min(Math.max(ratio, 0.8), 2.4);
    box.style.aspectRatio = shape;
    box.style.width = `min(100%, ${(30 * shape).toFixed(2)}rem, ${Math.max(m.width * 1.25, 240)}px)`;
  }
  const blur = m.blurhash && blurhashURL(m.blurhash, ratio);
  if (blur) box.style.backgroundImage = `url("${blur}")`;
  img.src = m.thumbnail_url || m.url;
  box.append(img);
  return box;
}

/** "Like", "More reactions" (the other five), the counts; shown at once, then reconciled. */
function reactions(p) {
  let state = { counts: p.reaction_counts || {}, mine: p.my_reaction };
  let seq = 0;
  const summary = h("span", { class: "reaction-summary" });
  const like = btn({ class: "ghost", onclick: () => choose("like") }, "Like");
  const more = btn({ class: "ghost", "aria-expanded": "false", onclick: () => open(picker.hidden) });
  const picker = h("div", { class: "picker", role: "group", "aria-label": "Reactions", hidden: true },
    Object.keys(REACTIONS).slice(1).map((type) => btn({ class: "ghost", title: title(type), "aria-label": title(type),
      dataset: { type }, onclick: () => { open(false); choose(type); } }, REACTIONS[type])));
  const wrap = h("div", { class: "react-more", onkeydown: (e) => e.key === "Escape" && open(false),
    onfocusout: (e) => !wrap.contains(e.relatedTarget) && open(false, false) }, more, picker);

  function open(show, refocus = true) {
    picker.hidden = !show;
    more.setAttribute("aria-expanded", show);
    if (show) picker.firstChild.focus();
    else if (refocus && wrap.contains(document.activeElement)) more.focus();
  }
  function draw() {
    const { counts, mine } = state;
    const other = mine && mine !== "like" && mine;
    like.setAttribute("aria-pressed", mine === "like");
    more.textContent = other ? REACTIONS[other] : "▾";
    more.setAttribute("aria-label", other ? `More reactions (yours: ${title(other)})` : "More reactions");
    for (const b of picker.children) b.setAttribute("aria-pressed", b.dataset.type === mine);
    const kinds = Object.entries(counts).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    fill(summary, kinds.length > 0 && [
      h("span", { "aria-hidden": "true" }, kinds.map(([t, n]) => `${REACTIONS[t]} ${n}`).join("  ")),
      h("span", { class: "sr-only" }, `Reactions: ${kinds.map(([t, n]) => `${n} ${t}`).join(", ")}`)]);
  }
  async function choose(type) {
    const before = state;
    const mine = ++seq;
    type = state.mine === type ? null : type; // choosing mine again takes it back
    const counts = { ...state.counts };
    if (state.mine && !--counts[state.mine]) delete counts[state.mine];
    if (type) counts[type] = (counts[type] || 0) + 1;
    state = { counts, mine: type };
    draw();
    try {
      const out = type ? await put(`/posts/${p.id}/reactions`, { type }) : await del(`/posts/${p.id}/reactions`);
      if (out && mine === seq) state = { counts: out.reaction_counts, mine: out.my_reaction };
    } catch (error) {
      if (mine === seq) state = before;
      toast(error.message, "error");
    }
    draw();
  }
  draw();
  return h("div", { class: "reactions row" }, like, wrap, summary);
}

/** "Comments (n)": the thread, replies under their parent, "Write a comment", "Reply" boxes. */
function comments(p, openNow) {
  let count = p.comment_count || 0;
  let loaded = null;
  const shown = new Map(); // comment id -> its <li>
  const toggle = btn({ class: "ghost comments-toggle", "aria-expanded": "false", onclick: () => show(panel.hidden) });
  const list = h("ul", { class: "comment-list" });
  const panel = h("div", { class: "comments", hidden: true }, list, box("Write a comment", "Comment", (text) => send(text)));
  const label = () => (toggle.textContent = `Comments (${count})`);

  async function load() {
    let cursor = null;
    do {
      const page = await get(`/posts/${p.id}/comments`, { cursor, limit: 100 });
      page.items.forEach(add);
      cursor = page.next_cursor;
    } while (cursor);
  }
  async function show(open) {
    toggle.setAttribute("aria-expanded", open);
    panel.hidden = !open;
    if (!open) return threads.delete(p.id);
    threads.set(p.id, () => (panel.isConnected ? load().catch(() => {}) : threads.delete(p.id)));
    loaded = loaded || load().then(() => list.setAttribute("aria-live", "polite"), (error) => {
      loaded = null;
      toast(error.message, "error");
    });
  }
  function add(c) {
    if (shown.has(c.id)) return;
    const li = comment(c);
    shown.set(c.id, li);
    const parent = shown.get(c.parent_id);
    (parent ? parent.lastChild : list).append(li);
    count = Math.max(count, shown.size);
    label();
  }
  async function send(text, parent = null) {
    add(await post(`/posts/${p.id}/comments`, { text, parent_id: parent }));
  }
  function comment(c) {
    const reply = btn({ class: "ghost", "aria-expanded": "false", onclick: () => replyBox() }, "Reply");
    const li = h("li", { class: "comment" },
      h("div", { class: "comment-main" }, avatar(c.author, "small"),
        h("div", { class: "comment-body" }, h("div", { class: "row" }, userLink(c.author), when(c.created_at)),
          h("p", { class: "comment-text" }, c.text), reply)),
      h("ul", { class: "replies" }));
    function replyBox() {
      let form = li.querySelector(":scope > form");
      if (!form) {
        const close = () => { form.remove(); reply.setAttribute("aria-expanded", "false"); reply.focus(); };
        form = box(`Reply to ${nameOf(c.author)}`, "Send reply", (text) => send(text, c.id).then(close));
        form.addEventListener("keydown", (e) => e.key === "Escape" && close());
        li.lastChild.before(form);
        reply.setAttribute("aria-expanded", "true");
      }
      form.querySelector("input").focus();
    }
    return li;
  }
  label();
  if (openNow) show(true);
  return h("div", { class: "post-comments" }, toggle, panel);
}

/** A one-line form: a text box named `label`, a submit button; send(text) -> promise. */
function box(label, button, send) {
  const input = h("input", { "aria-label": label, placeholder: `${label}…`, maxLength: 5000, required: true, autocomplete: "off" });
  const form = h("form", { class: "comment-form row" }, input, h("button", { type: "submit" }, button));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const submit = form.querySelector("button");
    submit.disabled = true;
    try {
      await send(input.value.trim());
      input.value = "";
      form.querySelector(".form-error")?.remove();
    } catch (error) {
      showError(form, error);
    }
    submit.disabled = false;
  });
  return form;
}
