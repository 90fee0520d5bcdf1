// The REST client: every call to /api/v1 goes through api(). Errors arrive as ApiError with
// the contract's envelope ({code, message, fields}); a 401 refreshes the session once and retries.

const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `request failed (${status})`);
    this.status = status;
    this.code = error.code || "network_error";
    this.fields = error.fields || null;
  }
}

let session = { token: async () => null, renew: async () => false };

/** auth.js tells us how to get a fresh access token and how to renew it after a 401. */
export function configure(hooks) {
  session = hooks;
}

function url(path, query) {
  const target = new URL(BASE + path, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") target.searchParams.set(key, value);
  }
  return target.pathname + target.search;
}

/** api("GET", "/feed", {query: {cursor}}) -> the parsed body (null for 204). */
export async function api(method, path, { body, query, form, auth = true, headers = {} } = {}, retried = false) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (auth) {
    const token = await session.token();
    if (token) init.headers.Authorization = `Bearer ${token}`;
  }
  if (form) {
    init.body = form;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url(path, query), init);
  } catch {
    throw new ApiError(0, { error: { code: "network_error", message: "Agora cannot be reached; check your connection." } });
  }
  if (response.status === 401 && auth && !retried && (await session.renew())) {
    return api(method, path, { body, query, form, auth, headers }, true);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 429) {
      error.retryAfter = Number(response.headers.get("Retry-After")) || 1;
    }
    throw error;
  }
  return data;
}

export const get = (path, query) => api("GET", path, { query });
export const post = (path, body) => api("POST", path, { body });
export const put = (path, body) => api("PUT", path, { body });
export const patch = (path, body) => api("PATCH", path, { body });
export const del = (path) => api("DELETE", path);

/** Upload an image (POST /media, multipart) -> the media object. */
export function upload(file, description = "") {
  const form = new FormData();
  form.append("file", file);
  if (description) form.append("description", description);
  return api("POST", "/media", { form });
}
