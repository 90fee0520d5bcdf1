// Notifications (#/notifications), grouped as the API groups them ("Ann, Bob and 3 others
// reacted to your post"), newest activity first, infinite scroll. Each links to its subject and
// is marked read when opened; unread ones stand out (and say so to screen readers); "Mark all
// as read". Live: a new or grown group comes to the top, and is announced.

import { h, avatar, when, toast } from "../lib/dom.js";
import { get, post } from "../lib/api.js";
import { realtime } from "../lib/socket.js";
import { refreshBadge } from "../lib/badges.js";
import { pager, nameOf, btn } from "../lib/posts.js";

// kind -> [what they did, what several of it are]
const SAY = {
  friend_request: ["sent you a friend request"], friend_accepted: ["accepted your friend request"],
  reaction: ["reacted to your post"], comment: ["commented on your post", "comments"],
  reply: ["replied to your comment", "replies"], mention: ["mentioned you", "mentions"],
  message: ["sent you a message", "messages"], report_resolved: ["resolved your report"],
};

const actors = (n) => (n.actors && n.actors.length ? n.actors : [n.actor]);

/** "Ann commented on your post (3 comments)", "Ann, Bob and 3 others reacted to your post" */
function sentence(n) {
  const names = actors(n).map(nameOf);
  const [did, many] = SAY[n.kind] || ["did something"];
  const count = n.notifications_count || 1;
  const others = n.kind === "reaction" ? count - names.length : 0; // one reaction per person
  const last = others > 0 ? `${others} other${others > 1 ? "s" : ""}` : names.pop();
  const who = names.length ? `${names.join(", ")} and ${last}` : last;
  return `${who} ${did}${many && count > 1 ? ` (${count} ${many})` : ""}`;
}

function target(n) {
  if (n.kind === "message") return `#/chat/${n.subject_id}`;
  if (n.post_id) return `#/feed?post=${n.post_id}`;
  return n.kind === "friend_request" ? "#/people" : n.subject_type === "user" ? `#/people/${n.actor.id}` : "#/notifications";
}

async function markRead(body) {
  await post("/notifications/read", body).catch((error) => toast(error.message, "error"));
  refreshBadge("notifications");
}

function seen(li) {
  li.classList.remove("unread");
  li.querySelector(".sr-only")?.remove();
}

function item(n) {
  const li = h("li", { class: `note${n.read ? "" : " unread"}`, dataset: { id: n.id } },
    h("span", { class: "faces" }, actors(n).slice(0, 3).map((u) => avatar(u, "small"))),
    h("div", { class: "note-body" },
      h("a", { href: target(n), onclick: () => li.classList.contains("unread") && (seen(li), markRead({ ids: [n.id] })) },
        !n.read && h("span", { class: "sr-only" }, "Unread: "), sentence(n)),
      when(n.updated_at || n.created_at)),
    h("span", { class: "note-dot", "aria-hidden": "true" }));
  return li;
}

export default async function render(main) {
  const list = h("ul", { class: "list notifications card", "aria-label": "Notifications" });
  const live = h("p", { class: "sr-only", role: "status" });
  const all = btn({ onclick: async () => {
    all.disabled = true;
    await markRead({ all: true });
    list.querySelectorAll(".unread").forEach(seen);
    all.disabled = false;
  } }, "Mark all as read");
  let paging = null;
  let lost = false;
  const load = () => {
    paging?.stop();
    list.replaceChildren();
    paging = pager(list, (cursor) => get("/notifications", { cursor }), item,
      "Nothing yet: reactions, comments, friend requests and messages show up here.");
    return paging.first;
  };
  const off = [
    realtime.on("notification", ({ notification: n }) => {
      list.querySelector(`[data-id="${n.id}"]`)?.remove();
      list.prepend(item(n));
      list.nextElementSibling.textContent = "";
      live.textContent = sentence(n);
    }),
    realtime.on("status", (state) => (lost ||= state !== "open")),
    realtime.on("ready", () => {
      if (lost) load(); // after a reconnect: what changed meanwhile
      lost = false;
    }),
  ];
  main.append(h("div", { class: "row spread" }, h("h1", null, "Notifications"), all), live, list);
  await load();
  return () => {
    off.forEach((f) => f());
    paging.stop();
  };
}
