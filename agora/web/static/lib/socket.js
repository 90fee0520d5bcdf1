// The realtime connection: one WebSocket per tab to /ws. Frames come out as events named by
// their "type" (realtime.on("message", fn)). It reconnects by itself with backoff (0.5 s doubling
// to 30 s, with jitter), closes while the browser is offline and reconnects the moment it is
// back, and notices a dead connection by its unanswered pings. After every (re)connect it emits
// "ready": screens then `sync` what they may have missed.

import { renew, token } from "./auth.js";

const PING_MS = 20_000;
const PONG_WAIT_MS = 8_000;
const MAX_BACKOFF_MS = 30_000;

class Realtime extends EventTarget {
  constructor() {
    super();
    this.ws = null;
    this.state = "closed"; // closed | connecting | open | offline
    this.wanted = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    window.addEventListener("offline", () => this.#offline());
    window.addEventListener("online", () => {
      if (!this.ws) this.#reconnectSoon(0);
    });
  }

  /** Frames of one type (or "status", "ready"): returns a function that unsubscribes. */
  on(type, fn) {
    const listener = (event) => fn(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  start() {
    this.wanted = true;
    if (!this.ws && this.state !== "connecting") this.#connect();
  }

  stop() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    this.#drop(1000);
    this.#status("closed");
  }

  /** Send a frame now; false when the socket is not open (the caller keeps it for later). */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  #status(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: state }));
  }

  async #connect() {
    if (!this.wanted) return;
    if (!navigator.onLine) return this.#status("offline");
    this.#status("connecting");
    if (this.attempt >= 2) await renew(); // an expired token fails the upgrade (401)
    const access = await token();
    if (!access || !this.wanted) return this.#status("closed");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(access)}`);
    this.ws = ws;
    ws.onmessage = (event) => this.#receive(event.data);
    ws.onclose = (event) => this.#closed(ws, event.code);
  }

  #receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "ready") {
      this.attempt = 0;
      this.#status("open");
      this.#keepAlive();
    }
    if (frame.type === "pong") clearTimeout(this.pongTimer);
    this.dispatchEvent(new CustomEvent(frame.type, { detail: frame }));
  }

  #keepAlive() {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (!this.send({ type: "ping" })) return;
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => this.#drop(4000), PONG_WAIT_MS); // a silent, dead link
    }, PING_MS);
  }

  #drop(code) {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) {
      try {
        ws.close(code === 1000 ? 1000 : 4000);
      } catch {
        // already closing
      }
    }
    return ws;
  }

  #closed(ws, code) {
    if (this.ws !== ws && this.ws !== null) return; // an older socket
    this.#drop(1000);
    if (!this.wanted) return;
    if (code === 4001) {
      // the login was revoked or the account suspended: final
      this.wanted = false;
      this.#status("closed");
      this.dispatchEvent(new CustomEvent("revoked", { detail: { code } }));
      return;
    }
    if (!navigator.onLine) return this.#status("offline");
    this.attempt += 1;
    const base = code === 1008 ? 10_000 : 500 * 2 ** Math.min(this.attempt - 1, 6);
    this.#reconnectSoon(Math.min(base, MAX_BACKOFF_MS) * (0.75 + Math.random() / 2));
  }

  #offline() {
    clearTimeout(this.retryTimer);
    this.#drop(1000);
    this.#status("offline");
  }

  #reconnectSoon(delay) {
    if (!this.wanted) return;
    clearTimeout(this.retryTimer);
    this.#status(navigator.onLine ? "connecting" : "offline");
    this.retryTimer = setTimeout(() => {
      if (!this.ws) this.#connect();
    }, delay);
  }
}

export const realtime = new Realtime();
