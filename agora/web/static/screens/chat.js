// The chat screen (#/chat, #/chat/<id>): the conversation list beside the open thread on wide
// screens, one or the other on phones. The thread loads older history as it is scrolled up
// (keeping the view still), shows a message at once as pending until its ack, who is typing,
// "Seen" receipts and the connection state. State and realtime frames live in chat-store.js.

import { h, fill, when, avatar, whenVisible, showError } from "../lib/dom.js";
import { get, post } from "../lib/api.js";
import { realtime } from "../lib/socket.js";
import { currentUser } from "../lib/auth.js";
import * as store from "./chat-store.js";

const PHONE = matchMedia("(max-width: 600px)");
const clock = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dated = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "numeric", minute: "2-digit" });
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
const URLS = /https?:\/\/[^\s<>"']*[^\s<>"'.,;:!?)\]]/g;
let listScroll = 0;

const button = (label, onclick, props) => h("button", { type: "button", onclick, ...props }, label);
const peer = (conv) => (conv.kind === "direct" ? store.others(conv)[0] : null);

/** A conversation's picture: the other member (with a presence dot), or the group's initial. */
function face(conv) {
  const other = peer(conv);
  const status = other && store.presence.get(other.id);
  return h("span", { class: "face", "aria-hidden": "true" }, avatar(other || { id: conv.id, display_name: store.titleOf(conv) }),
    status && h("span", { class: "dot", dataset: { status } }));
}

function typingText(cid) {
  const names = store.typingIn(cid).map((uid) => store.nameOf(store.member(cid, uid)));
  if (names.length > 2) return "Several people are typing…";
  return names.length ? `${names.join(" and ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

function stamp(iso) {
  const date = new Date(iso);
  const today = date.toDateString() === new Date().toDateString();
  return h("time", { datetime: iso, title: full.format(date) }, (today ? clock : dated).format(date));
}

function linkify(text) {
  const parts = [];
  let at = 0;
  for (const match of text.matchAll(URLS)) {
    parts.push(text.slice(at, match.index), h("a", { href: match[0], target: "_blank", rel: "noopener noreferrer" }, match[0]));
    at = match.index + match[0].length;
  }
  parts.push(text.slice(at));
  return parts;
}

// -- dialogs

function modal(main, title, body, opener) {
  const d = h("dialog", { class: "chat-dialog", "aria-labelledby": "dialog-title" }, h("h2", { id: "dialog-title" }, title), body);
  d.addEventListener("close", () => {
    d.remove();
    if (opener && opener.isConnected) opener.focus();
  });
  main.append(d);
  d.showModal();
  return d;
}

const friends = async () => (await get("/friends", { limit: 100 })).items.map((f) => f.user);
const noFriends = () => h("span", { class: "muted" },
  "No friends to add yet. Find people on the ", h("a", { href: "#/people" }, "People"), " screen.");
const buttons = (...children) => h("div", { class: "row end" }, ...children);

/** "New message": pick a friend, open the direct conversation with them. */
async function newMessage(main, opener) {
  const find = h("input", { type: "search", autocomplete: "off" });
  const list = h("ul", { class: "pick-list" }, h("li", { class: "muted" }, "Loading friends…"));
  const box = h("div", { class: "stack" }, h("label", { class: "field" }, h("span", null, "Find a friend"), find), list);
  const d = modal(main, "New message", [box, buttons(button("Cancel", () => d.close()))], opener);
  const start = async (user) => {
    try {
      const conv = store.upsert(await post("/conversations", { member_ids: [user.id] }));
      d.close();
      location.hash = `#/chat/${conv.id}`;
    } catch (error) {
      showError(box, error);
    }
  };
  const all = await friends().catch((error) => (showError(box, error), []));
  const draw = () => {
    const q = find.value.trim().toLowerCase();
    const shown = all.filter((u) => `${u.display_name} ${u.username}`.toLowerCase().includes(q));
    fill(list, shown.length ? shown.map((u) => h("li", null, button([avatar(u, "small"), h("span", null, store.nameOf(u)),
      h("span", { class: "muted" }, `@${u.username}`)], () => start(u), { class: "pick" })))
      : h("li", { class: "muted" }, all.length ? "No friend by that name." : noFriends()));
  };
  find.addEventListener("input", draw);
  draw();
}

/** "New group" (a name and friends), or "Add members" to a group (conv). */
async function pickMembers(main, opener, conv = null) {
  const name = !conv && h("input", { name: "title", required: true, maxLength: 200, autocomplete: "off" });
  const legend = h("legend", null, conv ? "Friends" : "Members");
  const boxes = h("fieldset", { class: "pick-list" }, legend, h("p", { class: "muted" }, "Loading friends…"));
  const submit = h("button", { type: "submit", class: "primary" }, conv ? "Add" : "Create group");
  const form = h("form", { class: "stack" },
    name && h("label", { class: "field" }, h("span", null, "Group name"), name), boxes,
    buttons(button("Cancel", () => d.close()), submit));
  const d = modal(main, conv ? "Add members" : "New group", form, opener);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const ids = [...boxes.querySelectorAll("input:checked")].map((input) => input.value);
    if (!ids.length) return showError(form, { message: "Choose at least one friend." });
    submit.disabled = true;
    try {
      const out = store.upsert(conv
        ? await post(`/conversations/${conv.id}/members`, { user_ids: ids })
        : await post("/conversations", { member_ids: ids, title: name.value.trim() }));
      d.close();
      if (!conv) location.hash = `#/chat/${out.id}`;
    } catch (error) {
      showError(form, error);
      submit.disabled = false;
    }
  });
  const taken = new Set(conv ? conv.members.map((u) => u.id) : []);
  const all = (await friends().catch((error) => (showError(form, error), []))).filter((u) => !taken.has(u.id));
  fill(boxes, legend, all.length ? all.map((u) => h("label", { class: "pick" },
    h("input", { type: "checkbox", value: u.id }), avatar(u, "small"), h("span", null, store.nameOf(u)))) : noFriends());
  if (conv) (boxes.querySelector("input") || submit).focus();
}

// -- the conversation list

function conversationList(main, current) {
  const ul = h("ul", { class: "conv-list", "aria-label": "Conversations" });
  const more = h("p", { class: "muted more", role: "status" }, "Loading…"); // or why the list is empty
  const scroll = h("div", { class: "conv-scroll" }, ul, more);
  const newBtn = button("New message", () => newMessage(main, newBtn));
  const groupBtn = button("New group", () => pickMembers(main, groupBtn));
  const el = h("section", { class: "conv-pane", "aria-labelledby": "chats-title" },
    h("div", { class: "pane-head" }, h("h2", { id: "chats-title" }, "Chats"), h("div", { class: "row" }, newBtn, groupBtn)),
    scroll);
  const links = new Map();

  function content(conv) {
    const other = peer(conv);
    const m = conv.last_message;
    const who = m && (m.sender_id === currentUser().id ? "You: " : other ? "" : `${store.nameOf(store.member(conv.id, m.sender_id))}: `);
    const sub = typingText(conv.id) || (m ? who + (m.removed ? "Message removed" : m.text) : other ? "" : `${conv.members.length} members`);
    const status = other && store.presence.get(other.id);
    const unread = conv.unread_count;
    return [face(conv),
      h("span", { class: "conv-main" }, h("span", { class: "conv-name" }, store.titleOf(conv)),
        status && h("span", { class: "sr-only" }, `, ${status}`), sub && h("span", { class: "conv-sub" }, sub)),
      h("span", { class: "conv-side" }, when(conv.last_activity_at),
        unread > 0 && h("span", { class: "badge", "aria-label": `${unread} unread` }, String(unread)))];
  }

  function draw() {
    const focused = document.activeElement;
    let cursor = ul.firstChild;
    const shown = new Set();
    for (const conv of store.sorted()) {
      let a = links.get(conv.id);
      if (!a) links.set(conv.id, (a = h("a", { href: `#/chat/${conv.id}`, class: "conv" })));
      if (conv.id === current) a.setAttribute("aria-current", "page");
      fill(a, content(conv));
      const li = a.parentElement || h("li", null, a);
      if (li !== cursor) ul.insertBefore(li, cursor);
      else cursor = cursor.nextSibling;
      shown.add(conv.id);
    }
    for (const [id, a] of links) if (!shown.has(id)) (a.parentElement.remove(), links.delete(id));
    if (focused && focused !== document.activeElement && focused.isConnected) focused.focus();
    if (store.listLoaded) more.textContent = links.size ? "" : "No conversations yet. Start one with “New message”.";
  }

  const loaded = store.loadList().catch((error) => (more.textContent = error.message));
  draw();
  requestAnimationFrame(() => (scroll.scrollTop = listScroll));
  const timer = setInterval(draw, 60_000);
  return {
    el,
    loaded,
    update: (what) => ["list", "typing", "presence"].includes(what) && draw(),
    cleanup: () => (clearInterval(timer), (listScroll = scroll.scrollTop)),
  };
}

// -- a thread

function thread(main, cid) {
  const me = currentUser().id;
  const title = h("h2", { id: "thread-title", tabindex: "-1" }, "Conversation");
  const sub = h("p", { class: "muted thread-sub" });
  const faceSlot = h("span");
  const addBtn = button("Add members", () => pickMembers(main, addBtn, store.convs.get(cid)), { hidden: true });
  const head = h("header", { class: "thread-head" },
    h("a", { href: "#/chat", class: "back" }, "Back"), faceSlot, h("div", { class: "thread-name" }, title, sub), addBtn);
  const note = h("p", { class: "history muted", role: "status" });
  const ol = h("ol", { class: "messages" });
  const scroller = h("div", { class: "scroller", tabindex: "0", role: "region", "aria-label": "Chat history" }, note, ol);
  const jump = button("New messages", () => toBottom(), { class: "jump", hidden: true });
  const typingLine = h("p", { class: "typing", role: "status" });
  const announce = h("p", { class: "sr-only", "aria-live": "polite" });
  const conn = h("p", { class: "conn-note", role: "status" });
  const box = h("textarea",
    { id: "chat-message", name: "text", rows: 1, maxLength: 4000, placeholder: "Write a message…", enterkeyhint: "send" });
  const form = h("form", { class: "composer" },
    h("label", { for: "chat-message", class: "sr-only" }, "Message"), box,
    h("button", { type: "submit", class: "primary" }, "Send"));
  const el = h("section", { class: "thread", "aria-labelledby": "thread-title" },
    head, conn, h("div", { class: "scroll-wrap" }, scroller, jump), typingLine, announce, form);
  const els = new Map(); // sender/client_id -> {li, sig}
  let stopOlder = () => {};
  let lastTyping = 0;
  let connTimer = null;

  const atBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
  function toBottom() {
    scroller.scrollTop = scroller.scrollHeight;
    jump.hidden = true;
  }

  function drawHead() {
    const conv = store.convs.get(cid);
    if (!conv) return;
    title.textContent = store.titleOf(conv);
    fill(faceSlot, face(conv));
    const other = peer(conv);
    const status = other && store.presence.get(other.id);
    sub.textContent = other ? (status ? status[0].toUpperCase() + status.slice(1) : `@${other.username}`)
      : `${store.others(conv).map(store.nameOf).join(", ")} and you`;
    addBtn.hidden = conv.kind !== "group";
  }

  function seen(conv, m) {
    const readers = conv ? store.others(conv).filter((u) => store.readBy(cid, u.id) >= m.seq) : [];
    if (!readers.length) return "Sent";
    return peer(conv) ? "Seen" : `Seen by ${readers.map(store.nameOf).join(", ")}`;
  }

  function fillMessage(li, m, status, showName, showTime) {
    const mine = m.sender_id === me;
    const who = mine ? "You" : store.nameOf(store.member(cid, m.sender_id));
    li.className = `msg${mine ? " mine" : ""}${m.pending ? " pending" : ""}${m.error ? " failed" : ""}`;
    fill(li,
      showName ? h("p", { class: "sender" }, who) : h("span", { class: "sr-only" }, `${who}: `),
      h("div", { class: "bubble" }, m.removed ? h("em", null, "Message removed") : linkify(m.text)),
      showTime && h("p", { class: "meta" }, stamp(m.created_at), status && h("span", { class: "status" }, status),
        m.error && [button("Retry", () => store.retry(m.client_id)), button("Discard", () => store.retry(m.client_id, false))]));
  }

  function draw(older = false) {
    const conv = store.convs.get(cid);
    const items = store.messagesOf(cid);
    const bottom = atBottom();
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    const lastMine = items.findLastIndex((m) => m.sender_id === me && !m.pending && !m.error);
    const shown = new Set();
    const fresh = [];
    let cursor = ol.firstChild;
    items.forEach((m, i) => {
      const key = `${m.sender_id}/${m.client_id}`;
      const showName = conv && conv.kind === "group" && m.sender_id !== me && (i === 0 || items[i - 1].sender_id !== m.sender_id);
      const status = m.error ? `Not sent: ${m.error}` : m.pending ? "Sending…" : i === lastMine ? seen(conv, m) : "";
      const next = items[i + 1];
      const showTime = Boolean(status || !next || next.sender_id !== m.sender_id
        || Date.parse(next.created_at) - Date.parse(m.created_at) > 300_000); // the end of a run
      const sig = `${m.seq}|${status}|${showName}|${showTime}|${m.removed}`;
      let e = els.get(key);
      if (!e) els.set(key, (e = { li: h("li") })), fresh.push(m);
      if (e.sig !== sig) fillMessage(e.li, m, status, showName, showTime), (e.sig = sig);
      if (e.li !== cursor) ol.insertBefore(e.li, cursor);
      else cursor = cursor.nextSibling;
      shown.add(key);
    });
    for (const [key, e] of els) if (!shown.has(key)) (e.li.remove(), els.delete(key));
    const h2 = store.held.get(cid);
    note.textContent = !h2 || !h2.complete ? (h2 && h2.loading ? "Loading older messages…" : "")
      : items.length ? "This is the beginning of the conversation." : "No messages yet. Say hello!";
    if (older) scroller.scrollTop = scroller.scrollHeight - fromBottom; // the view stays still
    else if (bottom) toBottom();
    const incoming = older ? [] : fresh.filter((m) => m.sender_id !== me && !m.pending);
    if (incoming.length && !bottom) jump.hidden = false;
    const said = (m) => `${store.nameOf(store.member(cid, m.sender_id))}: ${m.text}`;
    if (incoming.length) announce.textContent = incoming.map(said).join("\n");
  }

  function watchOlder() {
    stopOlder();
    const h2 = store.held.get(cid);
    if (h2 && h2.complete) return;
    stopOlder = whenVisible(note, () => {
      stopOlder();
      note.textContent = "Loading older messages…";
      store.loadOlder(cid).catch((error) => (note.textContent = error.message));
    }, scroller);
  }

  function showConn(state) {
    clearTimeout(connTimer);
    const text = state === "offline" ? "Offline — messages will be sent when you're back"
      : "Connecting… messages will be sent once connected";
    if (state === "open") conn.textContent = "";
    else if (state === "offline") conn.textContent = text;
    else connTimer = setTimeout(() => (conn.textContent = realtime.state === "open" ? "" : text), 1500);
  }

  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  const grow = () => {
    box.style.height = "auto";
    box.style.height = `${Math.min(box.scrollHeight + 2, 160)}px`;
  };
  box.addEventListener("input", () => {
    grow();
    if (!box.value.trim() || Date.now() - lastTyping < 2000) return; // "typing" at most every 2 s
    if (realtime.send({ type: "typing", conversation_id: cid })) lastTyping = Date.now();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = box.value.trim();
    if (!text) return;
    store.send(cid, text);
    box.value = "";
    lastTyping = 0;
    grow();
    toBottom();
  });
  scroller.addEventListener("scroll", () => atBottom() && (jump.hidden = true), { passive: true });
  const offStatus = realtime.on("status", showConn);
  showConn(realtime.state);

  store.ensure(cid).then(drawHead, (error) => {
    note.textContent = error.status === 404 ? "This conversation does not exist, or you are not in it." : error.message;
    form.hidden = true;
  });
  store.setOpen(cid);
  drawHead();
  draw();

  return {
    el,
    /** In the page: scroll to the end, focus, load the newest page if needed (the promise). */
    mounted() {
      toBottom();
      (PHONE.matches ? title : box).focus({ preventScroll: true });
      const first = store.held.has(cid) ? Promise.resolve()
        : store.loadOlder(cid).catch((error) => (note.textContent = error.message));
      first.then(watchOlder);
      return first;
    },
    update(what, id) {
      if (what === "list" || what === "presence") drawHead();
      if (id !== cid) return;
      if (what === "typing") typingLine.textContent = typingText(cid);
      if (what === "thread" || what === "read" || what === "older") draw(what === "older");
      if (what === "older") watchOlder();
    },
    cleanup: () => (stopOlder(), offStatus(), clearTimeout(connTimer), store.closed(cid)),
  };
}

function placeholder() {
  return { el: h("section", { class: "thread empty", "aria-label": "No conversation open" },
    h("p", { class: "muted" }, "Choose a conversation, or start one with “New message” or “New group”.")),
    mounted: () => null, update: () => {}, cleanup: () => {} };
}

/** The chat fills the window below the top bar; the bar's height changes as it wraps. */
function fitBelow(root) {
  const bar = document.getElementById("top");
  const observer = new ResizeObserver(() => root.style.setProperty("--chat-top", `${bar.offsetHeight}px`));
  observer.observe(bar);
  return () => observer.disconnect();
}

let active = null; // the cleanup of the chat drawn last

/** Draws at once; resolves (to the cleanup) when the first list and messages are in. */
export default async function render(main, params) {
  if (active) active(); // a chat drawn over without its cleanup (the user moved on as it loaded)
  const cid = params.id;
  const list = conversationList(main, cid);
  const pane = cid ? thread(main, cid) : placeholder();
  const root = h("div", { class: "chat", dataset: { view: cid ? "thread" : "list" } }, list.el, pane.el);
  main.append(root);
  const unfit = fitBelow(root);
  const off = store.subscribe((what, id) => {
    if (!root.isConnected) return cleanup(); // replaced by another screen without a cleanup
    list.update(what);
    pane.update(what, id);
  });
  let done = false;
  const cleanup = () => {
    if (done) return;
    done = true;
    if (active === cleanup) active = null;
    off();
    unfit();
    list.cleanup();
    pane.cleanup();
  };
  active = cleanup;
  const wait = new Promise((resolve) => setTimeout(resolve, 3000));
  await Promise.race([Promise.all([list.loaded, pane.mounted()]), wait]);
  if (root.isConnected) return cleanup;
  cleanup(); // the user moved on meanwhile
  return null;
}
