// The browser's session. The refresh token lives in an HttpOnly cookie set by
// /api/v1/auth/web/* (no script can read it); the access token lives here, in memory only, and
// is renewed a minute before it expires. Tabs renew one at a time (Web Locks), because refresh
// tokens rotate and presenting a spent one revokes the login.

import { api, ApiError, configure } from "./api.js";

const CSRF = { "X-Agora-CSRF": "1" };
const MARGIN_MS = 60_000;
let access = null; // {token, expires: ms since epoch}
let me = null;
let timer = null;
let renewing = null;
const listeners = new Set();

export const currentUser = () => me;
export const onChange = (fn) => listeners.add(fn);
const changed = () => listeners.forEach((fn) => fn(me));

function accept(out) {
  access = { token: out.access_token, expires: Date.now() + out.expires_in * 1000 };
  me = out.user;
  clearTimeout(timer);
  timer = setTimeout(() => renew(), Math.max(out.expires_in * 1000 - MARGIN_MS, 5_000));
  changed();
  return me;
}

function forget() {
  access = null;
  me = null;
  clearTimeout(timer);
  changed();
}

async function refreshNow() {
  try {
    accept(await api("POST", "/auth/web/refresh", { auth: false, headers: CSRF }));
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) forget();
    return false;
  }
}

/** Renew the access token (one renewal at a time in this tab, one at a time across tabs). */
export function renew() {
  if (!renewing) {
    const run = navigator.locks ? navigator.locks.request("agora-refresh", refreshNow) : refreshNow();
    renewing = run.finally(() => {
      renewing = null;
    });
  }
  return renewing;
}

/** A valid access token, renewed first if it is about to expire (null when signed out). */
export async function token() {
  if (access && access.expires - Date.now() < MARGIN_MS / 2) await renew();
  return access ? access.token : null;
}

configure({ token, renew });

/** At start: resume the session of the cookie, if the browser has one. */
export async function restore() {
  if (!document.cookie.split("; ").includes("agora_session=1")) return null;
  await renew();
  return me;
}

export async function signIn(login, password) {
  return accept(await api("POST", "/auth/web/login", { body: { login, password }, auth: false }));
}

export async function signUp(fields) {
  return accept(await api("POST", "/auth/web/register", { body: fields, auth: false }));
}

export async function signOut() {
  try {
    await api("POST", "/auth/web/logout", { auth: false, headers: CSRF });
  } finally {
    forget();
  }
}

/** The profile changed (name, avatar): tell everyone who shows it. */
export function updateMe(user) {
  me = { ...me, ...user };
  changed();
}
