// The console's only way to the server: the same JSON routes any client uses, with the key
// the browser session holds (sessionStorage: gone when the tab closes, never in a cookie).

const KEY = "slatebandit.key";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.field = error.field;
  }
}

export function key() {
  return sessionStorage.getItem(KEY);
}

export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export async function api(method, path, body) {
  const headers = { accept: "application/json" };
  const stored = key();
  if (stored) headers["x-api-key"] = stored;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // not ours (a proxy's error page, say): report the status
    throw new ApiError(response.status, { error: { message: `HTTP ${response.status}: not JSON` } });
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);
