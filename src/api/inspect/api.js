// Talking to sessiond: the API key, requests, the error envelope, and the server's clock.

export const API = "/api/messaging";

// The key lives in this tab's sessionStorage only: it goes with the tab, is not shared with
// other tabs, and never reaches localStorage, a cookie or an address.
const KEY_ITEM = "sessiond-inspector.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
  keyListeners.forEach((listener) => listener(Boolean(key)));
}

const keyListeners = [];
export function onKeyChange(listener) {
  keyListeners.push(listener);
}

/** An error answer from the server: its status and the envelope's code, message, details. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** The error of a failed response, from its envelope when it has one. */
export async function errorOf(response) {
  let envelope = null;
  try {
    envelope = await response.json();
  } catch {
    // Not JSON: a proxy's page, say.
  }
  const error = envelope?.error;
  if (error && typeof error.message === "string") {
    return new ApiError(response.status, error.code, error.message, error.details ?? "");
  }
  return new ApiError(response.status, "HTTP_" + response.status, `The server answered ${response.status}`, "");
}

// Asks the person for the key; set by the page. Returns the key, or null if they cancel.
let askForKey = async () => null;
export function whenKeyIsNeeded(ask) {
  askForKey = ask;
}

// One question at a time: requests refused together wait for the same answer.
let pendingAsk = null;
function askOnce(refused) {
  pendingAsk ??= askForKey(refused).finally(() => {
    pendingAsk = null;
  });
  return pendingAsk;
}

/**
 * `fetch` with the key; on 401, asks for the key and tries again with it. Returns the
 * response whatever its status (a 401 only when the person gave up).
 */
export async function authorizedFetch(path, init = {}) {
  for (;;) {
    const key = apiKey();
    const headers = new Headers(init.headers);
    if (key) headers.set("X-API-Key", key);
    const response = await fetch(path, { ...init, headers, cache: "no-store" });
    if (response.status !== 401) return response;
    // The key in storage was refused, or there was none.
    const given = await askOnce(Boolean(key));
    if (!given) return response;
  }
}

/** A JSON request; resolves to the body, rejects with an ApiError. */
export async function request(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await authorizedFetch(API + path, init);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** A query string from the parameters that have a value. */
export function query(parameters) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(parameters)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// The server's clock, as an offset from this one: countdowns count to the server's
// expiresAt, which a browser whose clock is off would otherwise get wrong.
let clockOffset = 0;
export function serverNow() {
  return Date.now() + clockOffset;
}

/** The health report (open even with a key); sets the clock offset as a side effect. */
export async function health() {
  const sent = Date.now();
  const response = await fetch(`${API}/sessions/health`, { cache: "no-store" });
  const received = Date.now();
  const body = await response.json();
  const at = Date.parse(body.timestamp);
  if (Number.isFinite(at)) clockOffset = at - (sent + received) / 2;
  return body;
}
