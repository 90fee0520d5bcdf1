// The web client's entry: resume the session, draw the navigation, route by the URL's hash
// (#/feed, #/people/42, #/chat/7, #/search?q=...) to a screen module, loaded when first needed.
// A screen is `export default function render(main, params) -> cleanup?`.

import { h, fill, toast } from "./lib/dom.js";
import { currentUser, onChange, restore, signOut } from "./lib/auth.js";
import { realtime } from "./lib/socket.js";
import { badgeCounts, onBadges, refreshBadge } from "./lib/badges.js";

const SCREENS = {
  feed: () => import("./screens/feed.js"),
  people: () => import("./screens/people.js"),
  notifications: () => import("./screens/notifications.js"),
  chat: () => import("./screens/chat.js"),
  search: () => import("./screens/search.js"),
  auth: () => import("./screens/auth.js"),
};

const main = document.getElementById("main");
const top = document.getElementById("top");
let cleanup = null;
let drawn = null;

/** "#/chat/7?x=1" -> {name: "chat", id: "7", query: URLSearchParams} */
function parse(hash) {
  const [path, search] = (hash.replace(/^#\/?/, "") || "feed").split("?");
  const [name, id = null, sub = null] = path.split("/");
  return { name: SCREENS[name] && name !== "auth" ? name : "feed", id, sub, query: new URLSearchParams(search || "") };
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  const signedIn = Boolean(currentUser());
  const params = signedIn ? parse(location.hash) : { name: "auth", query: new URLSearchParams() };
  const key = `${params.name}/${params.id}/${params.sub}/${params.query}`;
  if (drawn === key) return;
  drawn = key;
  if (typeof cleanup === "function") cleanup();
  cleanup = null;
  top.hidden = !signedIn;
  if (signedIn) highlight(params.name);
  const module = await SCREENS[params.name]();
  if (drawn !== key) return; // the user moved on while it loaded
  main.replaceChildren();
  main.dataset.screen = params.name;
  const done = await module.default(main, params);
  if (drawn !== key) {
    // drawn over while it rendered: the newer screen owns the page now
    if (typeof done === "function") done();
    return;
  }
  cleanup = done;
  // "agora:rendered:feed" etc.: when the screen first showed its content (screens resolve
  // render() once their first page is drawn); the browser tests report it.
  if (!performance.getEntriesByName(`agora:rendered:${params.name}`).length) {
    performance.mark(`agora:rendered:${params.name}`);
  }
}

function link(name, label, badge = null) {
  return h("a", { href: `#/${name}`, class: "nav-link", dataset: { screen: name } },
    h("span", { class: "label" }, label),
    badge && h("span", { class: "badge", dataset: { badge }, hidden: true }));
}

function drawNav() {
  const me = currentUser();
  fill(top,
    h("a", { href: "#/feed", class: "brand", "aria-label": "Agora home" }, "Agora"),
    h("nav", { "aria-label": "Main" },
      link("feed", "Feed"),
      link("people", "People"),
      link("notifications", "Notifications", "notifications"),
      link("chat", "Chat", "chat"),
      link("search", "Search")),
    h("div", { class: "me" },
      h("span", { class: "connection", role: "status", "aria-live": "polite", dataset: { state: realtime.state } }),
      h("a", { href: `#/people/${me.id}`, class: "who" }, me.display_name || me.username),
      h("button", { type: "button", class: "ghost", onclick: () => signOut().then(() => navigate("#/feed")) }, "Sign out")));
  showBadges(badgeCounts());
}

function highlight(name) {
  for (const el of top.querySelectorAll(".nav-link")) {
    if (el.dataset.screen === name) el.setAttribute("aria-current", "page");
    else el.removeAttribute("aria-current");
  }
}

function showBadges(counts) {
  for (const [name, count] of Object.entries(counts)) {
    const el = top.querySelector(`[data-badge="${name}"]`);
    if (!el) continue;
    el.hidden = count === 0;
    el.textContent = count > 99 ? "99+" : String(count);
    el.setAttribute("aria-label", `${count} unread`);
  }
}

const STATUS_TEXT = { open: "", connecting: "Connecting…", offline: "Offline", closed: "" };
realtime.on("status", (state) => {
  const el = top.querySelector(".connection");
  if (!el) return;
  el.dataset.state = state;
  el.textContent = STATUS_TEXT[state] || "";
});
realtime.on("revoked", async () => {
  toast("You were signed out (this login was revoked).", "error");
  await signOut().catch(() => {});
});
onBadges(showBadges);

let signedInAs = null;
onChange((me) => {
  const id = me ? me.id : null;
  if (id === signedInAs) {
    // the same person: a renewed token or an edited profile
    const who = top.querySelector(".me .who");
    if (me && who) who.textContent = me.display_name || me.username;
    return;
  }
  signedInAs = id;
  if (me) {
    drawNav();
    // The chat's store listens before the socket opens, so the presence and messages that
    // arrive while another screen is shown are kept for the chat.
    import("./screens/chat-store.js").finally(() => realtime.start());
    refreshBadge();
  } else {
    realtime.stop();
  }
  drawn = null;
  route();
});

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (event) => {
  // an API error nobody handled: tell the user instead of the console
  event.preventDefault();
  toast(event.reason && event.reason.message ? event.reason.message : "Something went wrong.", "error");
});

(async () => {
  await restore().catch(() => null);
  if (!currentUser()) route();
})();
