// The unread counts in the navigation: notifications and chat. Read from the API at start and
// after each live frame that may change them (coalesced), and on demand after marking read.

import { get } from "./api.js";
import { realtime } from "./socket.js";
import { currentUser } from "./auth.js";

const counts = { notifications: 0, chat: 0 };
const listeners = new Set();
const pending = {};

export const badgeCounts = () => ({ ...counts });
export const onBadges = (fn) => listeners.add(fn);

function set(name, value) {
  if (counts[name] === value) return;
  counts[name] = value;
  listeners.forEach((fn) => fn({ ...counts }));
}

const loaders = {
  notifications: async () => (await get("/notifications", { unread: "true", limit: 1 })).unread_count || 0,
  chat: async () => {
    const page = await get("/conversations", { limit: 100 });
    return page.items.reduce((sum, c) => sum + (c.unread_count || 0), 0);
  },
};

/** Re-read one count (or both) soon; calls within 300 ms share one request. */
export function refreshBadge(name = null) {
  for (const key of name ? [name] : Object.keys(loaders)) {
    if (pending[key]) continue;
    pending[key] = setTimeout(async () => {
      if (!navigator.onLine) {
        pending[key] = null; // offline: "online" reconnects, and "ready" asks again
        return;
      }
      try {
        set(key, await loaders[key]());
      } catch {
        // offline or signed out: the next refresh will tell
      } finally {
        pending[key] = null;
      }
    }, 300);
  }
}

realtime.on("notification", () => refreshBadge("notifications"));
realtime.on("message", (frame) => {
  const me = currentUser();
  if (me && frame.message.sender_id !== me.id) refreshBadge("chat");
});
realtime.on("ready", () => refreshBadge());
