// Times and countdowns.

import { h } from "./dom.js";
import { serverNow } from "./api.js";

const MINUTE = 60_000;

/** "2026-11-21 10:00:01" in the browser's time zone, from an RFC 3339 time. */
export function dateTime(text) {
  const at = new Date(text);
  if (Number.isNaN(at.getTime())) return text ?? "—";
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ` +
    `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`
  );
}

/** "10:00:01.234", for events. */
export function clockTime(at = new Date()) {
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}.${pad(at.getMilliseconds(), 3)}`;
}

/** "3m 05s", "1h 02m", "2d 4h" for a positive duration in milliseconds. */
export function duration(ms) {
  const seconds = Math.ceil(ms / 1000);
  const days = Math.floor(seconds / 86_400);
  const hours = Math.floor((seconds % 86_400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const rest = seconds % 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (days > 0) return `${days}d ${hours}h`;
  if (hours > 0) return `${hours}h ${pad(minutes)}m`;
  if (minutes > 0) return `${minutes}m ${pad(rest)}s`;
  return `${rest}s`;
}

/** "3 minutes" for a number of minutes. */
export function minutes(n) {
  return n === 1 ? "1 minute" : `${n} minutes`;
}

/**
 * A countdown to a session's expiresAt, kept current by `tick`: "expires in 3m 05s", a
 * warning inside the session's warning threshold, "expired" at zero. `ended` shows the
 * session as ended whatever the time (deleted, say).
 */
export function countdown(session, { ended = null, testid = "countdown" } = {}) {
  const element = h("span", { class: "countdown", "data-testid": testid });
  updateCountdown(element, session, ended);
  return element;
}

/** Points an existing countdown at a newer view of the session. */
export function updateCountdown(element, session, ended = null) {
  element.dataset.expiresAt = String(Date.parse(session.expiresAt));
  element.dataset.warningMs = String((session.timeoutConfig?.warningThresholdMinutes ?? 0) * MINUTE);
  if (ended) element.dataset.ended = ended;
  else delete element.dataset.ended;
  render(element, serverNow());
}

/** The state of a session at `now`: "active", "warning" or "expired". */
export function stateAt(session, now = serverNow()) {
  const remaining = Date.parse(session.expiresAt) - now;
  if (!(remaining > 0)) return "expired";
  const warning = (session.timeoutConfig?.warningThresholdMinutes ?? 0) * MINUTE;
  return remaining <= warning ? "warning" : "active";
}

function render(element, now) {
  const expiresAt = Number(element.dataset.expiresAt);
  const warning = Number(element.dataset.warningMs);
  const remaining = expiresAt - now;
  let state;
  let text;
  if (element.dataset.ended) {
    state = "expired";
    text = element.dataset.ended;
  } else if (!(remaining > 0)) {
    state = "expired";
    text = "expired";
  } else {
    // The contract's isNearExpiration: 0 < timeRemaining <= the warning threshold.
    state = remaining <= warning ? "warning" : "active";
    text = duration(remaining);
  }
  if (element.dataset.state !== state) {
    element.dataset.state = state;
    element.dispatchEvent(new CustomEvent("countdownstate", { bubbles: true, detail: state }));
  }
  if (element.textContent !== text) element.textContent = text;
  element.title = Number.isFinite(expiresAt) ? `expires at ${dateTime(new Date(expiresAt).toISOString())}` : "";
}

/** Brings every countdown on the page up to the server's clock. */
export function tick() {
  const now = serverNow();
  document.querySelectorAll(".countdown[data-expires-at]").forEach((element) => render(element, now));
}

/** The colour class of an event name. */
export function eventClass(name) {
  if (name === "message") return "ev-message";
  if (name === "session.expired" || name === "session.deleted") return "ev-end";
  if (name === "session.expiring") return "ev-warn";
  return "ev-session";
}
