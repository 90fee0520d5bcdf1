// The chat's state, kept while the user is on other screens: conversations, the messages held
// per conversation (a window ending at the newest), the outbox of messages not yet stored,
// presence, typing and read receipts. Realtime frames are merged here. After every (re)connect
// the outbox is resent with the same client_ids (the server answers a resend with the first
// ack) and every conversation held is synced from its last seq, one at a time (the server runs
// one sync per session), so nothing sent or missed while offline is lost.

import { get } from "../lib/api.js";
import { realtime } from "../lib/socket.js";
import { currentUser, onChange } from "../lib/auth.js";
import { refreshBadge } from "../lib/badges.js";

export const convs = new Map(); // id -> conversation (the API's object)
export const held = new Map(); // id -> {list: messages by seq, complete, loading}
export const outbox = new Map(); // client_id -> {client_id, conversation_id, text, created_at, seq?, error?}
export const presence = new Map(); // user id -> "online" | "offline"
const typing = new Map(); // conversation id -> Map(user id -> timer)
const reads = new Map(); // conversation id -> Map(user id -> seq read)
const fetching = new Map(); // conversation id -> promise of GET /conversations/{id}
const listeners = new Set();
export let listLoaded = false;
let open = null; // the conversation on screen
let owner = null; // whose state this is
let queue = []; // conversations waiting to sync
let syncing = null;

const me = () => (currentUser() || {}).id;
const emit = (what, cid = null) => listeners.forEach((fn) => fn(what, cid));

/** fn(what, conversationId): "list", "thread", "older", "typing", "read" or "presence". */
export const subscribe = (fn) => (listeners.add(fn), () => listeners.delete(fn));

// crypto.randomUUID exists in secure contexts only (a node on plain http elsewhere than localhost)
const uuid = () => (crypto.randomUUID ? crypto.randomUUID()
  : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join(""));

const heldList = (cid) => (held.has(cid) ? held.get(cid).list : []);
const lastSeq = (cid) => heldList(cid).at(-1)?.seq || 0; // the list is in seq order

/** Conversations, most recent activity first. */
export const sorted = () => [...convs.values()].sort((a, b) => Date.parse(b.last_activity_at) - Date.parse(a.last_activity_at));

export const others = (conv) => conv.members.filter((u) => u.id !== me());
export const nameOf = (user) => (user && (user.display_name || user.username)) || "Someone";
export const titleOf = (conv) => conv.title || others(conv).map(nameOf).join(", ") || "Just you";
export const member = (cid, uid) => (convs.get(cid)?.members || []).find((u) => u.id === uid);

function keep(conv) {
  const old = convs.get(conv.id);
  if (old) conv.last_read_seq = Math.max(conv.last_read_seq || 0, old.last_read_seq || 0);
  conv.unread_count = conv.id === open ? 0 : Math.max(0, conv.last_seq - (conv.last_read_seq || 0));
  convs.set(conv.id, conv);
  let moved = false; // after a reload, or receipts missed while offline
  for (const [uid, seq] of Object.entries(conv.read_seqs || {})) moved = seen(conv.id, uid, seq) || moved;
  if (moved) emit("read", conv.id);
  return conv;
}

/** Take a conversation the API returned (created, members added). */
export function upsert(conv) {
  keep(conv);
  emit("list");
  emit("thread", conv.id);
  return conv;
}

/** The 100 most recent conversations (as many as the nav's unread badge counts). */
export async function loadList() {
  (await get("/conversations", { limit: 100 })).items.forEach(keep);
  listLoaded = true;
  emit("list");
}

/** A conversation we do not know yet (a first message, a typing frame): fetch it once. */
export function ensure(cid) {
  if (convs.has(cid)) return Promise.resolve(convs.get(cid));
  if (!fetching.has(cid)) {
    fetching.set(cid, get(`/conversations/${cid}`).then(upsert).finally(() => fetching.delete(cid)));
  }
  return fetching.get(cid);
}

function add(cid, messages) {
  const list = heldList(cid);
  const seqs = new Set(list.map((m) => m.seq));
  list.push(...messages.filter((m) => !seqs.has(m.seq)));
  list.sort((a, b) => a.seq - b.seq);
}

/** Older history of a conversation (the newest page first time). */
export async function loadOlder(cid) {
  if (!held.has(cid)) held.set(cid, { list: [], complete: false, loading: false });
  const h = held.get(cid);
  if (h.loading || h.complete) return;
  h.loading = true;
  try {
    const before = h.list.length ? h.list[0].seq : null;
    const page = await get(`/conversations/${cid}/messages`, { before_seq: before, limit: 30 });
    add(cid, page.items);
    h.complete = !page.next_cursor;
  } finally {
    h.loading = false;
  }
  emit("older", cid);
  markRead(cid);
}

/** What the thread shows: the messages held, then the outbox's (acknowledged first). */
export function messagesOf(cid) {
  const list = heldList(cid);
  const mine = me();
  const stored = new Set(list.filter((m) => m.sender_id === mine).map((m) => m.client_id));
  const pending = [...outbox.values()].filter((p) => p.conversation_id === cid && !stored.has(p.client_id));
  pending.sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity));
  return [...list, ...pending.map((p) => ({ ...p, sender_id: mine, pending: !p.seq }))];
}

/** The seq up to which a member has read (read_seqs, receipts, sends). */
export const readBy = (cid, uid) => reads.get(cid)?.get(uid) || 0;

/** Move a member's receipt forward; true when it moved. */
function seen(cid, uid, seq) {
  const r = reads.get(cid) || reads.set(cid, new Map()).get(cid);
  if (seq <= (r.get(uid) || 0)) return false;
  r.set(uid, seq);
  return true;
}

export const typingIn = (cid) => [...(typing.get(cid)?.keys() || [])];

// -- sending

function transmit(p) {
  p.error = null;
  realtime.send({ type: "send", conversation_id: p.conversation_id, client_id: p.client_id, text: p.text });
}

/** Show a message at once as pending and send it (again after each reconnect until its ack). */
export function send(cid, text) {
  const p = { client_id: uuid(), conversation_id: cid, text, created_at: new Date().toISOString() };
  outbox.set(p.client_id, p);
  transmit(p);
  emit("thread", cid);
}

/** A message the server refused: send it again, or give it up. */
export function retry(clientId, again = true) {
  const p = outbox.get(clientId);
  if (!p) return;
  if (again) transmit(p);
  else outbox.delete(p.client_id);
  emit("thread", p.conversation_id);
}

// -- reading

/** The conversation on screen (null: none); it is marked read while the page is visible. */
export function setOpen(cid) {
  open = cid;
  markRead(cid);
}
export const closed = (cid) => open === cid && (open = null);

export function markRead(cid) {
  const conv = convs.get(cid);
  if (cid !== open || !conv || document.visibilityState !== "visible") return;
  const seq = Math.max(0, ...messagesOf(cid).map((m) => m.seq || 0));
  if (seq > (conv.last_read_seq || 0) && realtime.send({ type: "read", conversation_id: cid, seq })) {
    conv.last_read_seq = seq;
    refreshBadge("chat");
    setTimeout(() => navigator.onLine && refreshBadge("chat"), 1500); // once the server has stored it
  }
  if (conv.unread_count) {
    conv.unread_count = 0;
    emit("list");
  }
}

// -- syncing

function queueSync(cid, first = false) {
  const h = held.get(cid); // not before its first page: a sync from 0 would bring all of it
  if (!h || !(h.list.length || h.complete) || syncing === cid || queue.includes(cid)) return;
  if (first) queue.unshift(cid);
  else queue.push(cid);
  nextSync();
}

function nextSync() {
  if (syncing || !queue.length || realtime.state !== "open") return;
  syncing = queue.shift();
  if (!realtime.send({ type: "sync", conversation_id: syncing, after_seq: lastSeq(syncing) })) syncing = null;
}

function syncAll(ids) {
  if (open) queueSync(open, true);
  for (const cid of ids) queueSync(cid);
}

// -- frames

function stopTyping(cid, uid) {
  const users = typing.get(cid);
  if (!users || !users.has(uid)) return;
  clearTimeout(users.get(uid));
  users.delete(uid);
  emit("typing", cid);
}

function onMessage({ message: m }) {
  const cid = m.conversation_id;
  const mine = m.sender_id === me();
  if (mine) outbox.delete(m.client_id);
  stopTyping(cid, m.sender_id);
  seen(cid, m.sender_id, m.seq); // sending reads all before (the server's rule)
  const conv = convs.get(cid);
  if (conv) {
    if (m.seq >= conv.last_seq) conv.last_message = m;
    conv.last_seq = Math.max(conv.last_seq, m.seq);
    if (Date.parse(m.created_at) > Date.parse(conv.last_activity_at)) conv.last_activity_at = m.created_at;
    if (mine) conv.last_read_seq = Math.max(conv.last_read_seq || 0, m.seq);
    keep(conv);
  } else {
    ensure(cid).catch(() => {});
  }
  if (held.has(cid)) {
    const last = lastSeq(cid);
    if (last && m.seq > last + 1) queueSync(cid); // a gap: the sync brings this one too
    else add(cid, [m]);
  }
  emit("thread", cid);
  emit("list");
  markRead(cid);
}

function onAck(frame) {
  const p = outbox.get(frame.client_id); // stored: its own "message" frame follows, in seq order
  if (p) (p.seq = frame.seq), emit("thread", p.conversation_id);
}

function onError(frame) {
  const p = frame.ref && outbox.get(frame.ref);
  if (p && !p.seq) {
    if (frame.retry) setTimeout(() => outbox.has(p.client_id) && transmit(p), (frame.retry_after || 1) * 1000);
    else p.error = frame.message || "Not sent";
    emit("thread", p.conversation_id);
  } else if (frame.ref && frame.ref === syncing) {
    const cid = syncing;
    syncing = null;
    if (frame.code === "rate_limited" || frame.retry) setTimeout(() => queueSync(cid, true), 1000);
    else nextSync();
  }
}

function onTyping({ conversation_id: cid, user_id: uid, expires_in: seconds }) {
  if (uid === me()) return;
  ensure(cid).catch(() => {});
  if (!typing.has(cid)) typing.set(cid, new Map());
  const users = typing.get(cid);
  clearTimeout(users.get(uid));
  users.set(uid, setTimeout(() => stopTyping(cid, uid), (seconds || 5) * 1000));
  presence.set(uid, "online"); // only a connected session types
  emit("typing", cid);
}

function onRead({ conversation_id: cid, user_id: uid, seq }) {
  if (seen(cid, uid, seq)) emit("read", cid);
}

function onSynced({ conversation_id: cid, last_seq: seq }) {
  const conv = convs.get(cid);
  if (conv) conv.last_seq = Math.max(conv.last_seq, seq);
  if (syncing === cid) syncing = null;
  markRead(cid);
  nextSync();
}

function onReady() {
  syncing = null;
  queue = [];
  for (const p of outbox.values()) if (!p.seq && !p.error) transmit(p);
  syncAll([...held.keys()]);
  if (listLoaded) loadList().catch(() => {});
}

function reset() {
  for (const store of [convs, held, outbox, presence, reads, fetching]) store.clear();
  for (const users of typing.values()) users.forEach((timer) => clearTimeout(timer));
  typing.clear();
  listLoaded = false;
  queue = [];
  syncing = null;
}

realtime.on("message", onMessage);
realtime.on("ack", onAck);
realtime.on("error", onError);
realtime.on("typing", onTyping);
realtime.on("read", onRead);
realtime.on("synced", onSynced);
realtime.on("ready", onReady);
realtime.on("resync", ({ conversation_ids: ids }) => {
  syncAll(ids || [...held.keys()]);
  loadList().catch(() => {});
});
realtime.on("presence", ({ user_id: uid, status }) => {
  presence.set(uid, status);
  emit("presence");
});
document.addEventListener("visibilitychange", () => open && markRead(open));
onChange((user) => {
  const id = user ? user.id : null;
  if (id !== owner) reset();
  owner = id;
});
owner = me() || null;
