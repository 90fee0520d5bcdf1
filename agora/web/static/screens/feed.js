// The news feed (#/feed): a composer (text, visibility, up to 4 images with alt text), newest or
// top posts with infinite scroll, and friends' new posts (live "post" frames) offered as an
// "N new posts" button rather than pushed in: the list never moves by itself.
// #/feed?post=<id>: one post, its comments open (where notifications link).

import { h, fill, toast, showError } from "../lib/dom.js";
import { get, post, upload } from "../lib/api.js";
import { realtime } from "../lib/socket.js";
import { postCard, pager, btn } from "../lib/posts.js";

export default async function render(main, params) {
  if (params.query.get("post")) return single(main, params.query.get("post"));
  let rank = "recent";
  let paging = null;
  let newest = "";
  let pending = [];
  let lost = false;
  const shown = new Set();
  const list = h("div", { class: "posts", role: "feed", "aria-label": "Posts" });
  const fresh = btn({ class: "primary", hidden: true, onclick: reveal });
  const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Order" },
    btn({ value: "recent", onclick: order }, "Newest"),
    btn({ value: "top", onclick: order }, "Top"));

  const draw = (p) => {
    if (shown.has(p.id)) return null;
    shown.add(p.id);
    if (p.created_at > newest) newest = p.created_at;
    return postCard(p, { onDelete: () => shown.delete(p.id) });
  };
  function load() {
    if (paging) paging.stop();
    list.replaceChildren();
    shown.clear();
    pending = [];
    count();
    for (const b of tabs.children) b.setAttribute("aria-pressed", b.value === rank);
    paging = pager(list, (cursor) => get("/feed", { cursor, rank: rank === "top" ? "top" : null }), draw,
      rank === "top" ? "Nothing popular in the last three days." : "No posts yet: add friends, or write the first one.");
    return paging.first;
  }
  function order(e) {
    rank = e.currentTarget.value;
    return load();
  }
  function count() {
    // floats just under the sticky top bar, whatever its height
    fresh.parentElement.style.top = `${document.getElementById("top").offsetHeight + 8}px`;
    fresh.hidden = !pending.length;
    fresh.textContent = `${pending.length} new post${pending.length === 1 ? "" : "s"}`;
  }
  function offer(p) {
    if (shown.has(p.id) || pending.some((x) => x.id === p.id)) return;
    pending.push(p);
    count();
  }
  async function reveal() {
    const items = pending.sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    if (rank !== "recent") await order({ currentTarget: tabs.firstChild });
    const cards = items.map(draw).filter(Boolean);
    pending = [];
    count();
    list.prepend(...cards);
    scrollTo({ top: 0 });
    (cards[0] || list.firstChild || main).focus({ preventScroll: true });
  }
  function posted(p) {
    pending = pending.filter((x) => x.id !== p.id);
    count();
    const card = draw(p);
    if (card) list.prepend(card);
    list.nextElementSibling.textContent = ""; // no more "No posts yet"
  }

  const off = [
    realtime.on("post", (frame) => offer(frame.post)),
    realtime.on("status", (state) => (lost ||= state !== "open")),
    // back after a reconnect: what came meanwhile joins the offer
    realtime.on("ready", async () => {
      if (!lost || rank !== "recent") return;
      lost = false;
      const page = await get("/feed").catch(() => ({ items: [] }));
      page.items.filter((p) => p.created_at > newest).forEach(offer);
    }),
  ];
  main.append(h("div", { class: "row spread" }, h("h1", null, "Feed"), tabs), composer(posted),
    h("div", { class: "fresh", "aria-live": "polite" }, fresh), list);
  await load();
  return () => {
    off.forEach((f) => f());
    paging.stop();
  };
}

async function single(main, id) {
  main.append(h("p", null, h("a", { href: "#/feed" }, "← Back to the feed")), h("h1", { class: "sr-only" }, "Post"));
  try {
    main.append(postCard(await get(`/posts/${id}`), { open: true, onDelete: () => (location.hash = "#/feed") }));
  } catch (error) {
    main.append(h("p", { class: "card" }, error.status === 404 ? "This post was deleted, or you may not see it." : error.message));
  }
}

let lastVisibility = "friends"; // the composer's last choice, for this tab's life

/** "What's on your mind?", "Visibility", "Add images" (each previewed, with "Alt text for
 *  image N"), "Post" (or Ctrl+Enter). */
function composer(posted) {
  let images = []; // {file, url: its blob: preview, alt}
  const text = h("textarea", { rows: 3, maxLength: 10000, required: true, placeholder: "What's on your mind?" });
  const visibility = h("select", null, h("option", { value: "friends" }, "Friends"), h("option", { value: "public" }, "Public"),
    h("option", { value: "private" }, "Only me"));
  visibility.value = lastVisibility; // the client keeps nothing in the browser's storage
  const files = h("input", { type: "file", class: "sr-only", multiple: true, accept: "image/jpeg,image/png,image/gif,image/webp" });
  const previews = h("ul", { class: "previews", "aria-label": "Images" });
  const submit = h("button", { type: "submit", class: "primary" }, "Post");
  const form = h("form", { class: "card post-composer", "aria-label": "New post" },
    h("label", null, h("span", { class: "sr-only" }, "What's on your mind?"), text), previews,
    h("div", { class: "row spread" },
      h("div", { class: "row" }, h("label", { class: "button file-pick" }, files, "Add images"),
        h("label", null, h("span", { class: "sr-only" }, "Visibility"), visibility)),
      submit));

  function drawPreviews() {
    fill(previews, images.map((img, i) => h("li", { class: "preview" }, h("img", { src: img.url, alt: "" }),
      h("label", null, h("span", { class: "sr-only" }, `Alt text for image ${i + 1}`),
        h("input", { value: img.alt, placeholder: "Alt text", maxLength: 1500, oninput: (e) => (img.alt = e.target.value) })),
      btn({ class: "ghost", "aria-label": `Remove image ${i + 1}`, onclick: () => {
        URL.revokeObjectURL(img.url);
        images.splice(i, 1);
        drawPreviews();
        files.focus();
      } }, "✕"))));
    previews.hidden = !images.length;
    files.disabled = images.length >= 4;
  }
  files.addEventListener("change", () => {
    const before = images.length;
    const picked = [...files.files];
    if (before + picked.length > 4) toast("A post has at most 4 images.", "error");
    images.push(...picked.slice(0, 4 - before).map((file) => ({ file, url: URL.createObjectURL(file), alt: "" })));
    files.value = "";
    drawPreviews();
    previews.children[before]?.querySelector("input").focus(); // its alt text next
  });
  visibility.addEventListener("change", () => (lastVisibility = visibility.value));
  text.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !(e.ctrlKey || e.metaKey)) return;
    e.preventDefault();
    form.requestSubmit();
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (submit.disabled) return;
    submit.disabled = true;
    submit.textContent = "Posting…";
    try {
      const media = await Promise.all(images.map((img) => upload(img.file, img.alt.trim())));
      const created = await post("/posts", { text: text.value.trim(), visibility: visibility.value, media_ids: media.map((m) => m.id) });
      images.forEach((img) => URL.revokeObjectURL(img.url));
      images = [];
      text.value = "";
      drawPreviews();
      form.querySelector(".form-error")?.remove();
      posted(created);
      text.focus();
    } catch (error) {
      showError(form, error);
    }
    submit.disabled = false;
    submit.textContent = "Post";
  });
  drawPreviews();
  return form;
}
