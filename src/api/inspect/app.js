// The inspector: routes the page's own addresses to its views, and keeps the top bar (the
// server's health, the API key) and every countdown current.

import { apiKey, health, onKeyChange, setApiKey, whenKeyIsNeeded } from "./api.js";
import { askForKey } from "./dialogs.js";
import { h, fill } from "./dom.js";
import { feedView } from "./feed.js";
import { tick } from "./format.js";
import { listView } from "./list.js";
import { sessionView } from "./session.js";

const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

const view = document.getElementById("view");
let stop = null;

whenKeyIsNeeded(async (refused) => {
  const key = await askForKey(refused);
  if (key) setApiKey(key);
  return key;
});

/** Goes to `url`, one of the page's own, without reloading. */
export function navigate(url, state = null) {
  history.pushState(state, "", url);
  route();
}

function route() {
  stop?.();
  stop = null;
  window.scrollTo(0, 0);
  const path = location.pathname.replace(/\/+$/, "") || "/inspect";
  const context = { search: location.search, navigate };
  let match;
  if (path === "/inspect") {
    document.title = "Sessions · sessiond inspector";
    stop = listView(view, context);
  } else if ((match = path.match(/^\/inspect\/(session|agent|user)s\/([^/]+)$/))) {
    const [, kind, raw] = match;
    let id = raw;
    try {
      id = decodeURIComponent(raw);
    } catch {
      // Not percent-encoding: shown as it is, as not an id.
    }
    const title = `${kind[0].toUpperCase()}${kind.slice(1)} ${id.slice(0, 8)}`;
    document.title = `${title} · sessiond inspector`;
    // Only a UUID goes into the API's paths.
    if (!UUID.test(id)) notAnId(kind, id);
    else if (kind === "session") stop = sessionView(view, id, { ...context, known: history.state?.session });
    else stop = feedView(view, kind, id, context);
  } else {
    document.title = "Not found · sessiond inspector";
    fill(view, h("section", { class: "page" }, h("h1", {}, "Nothing here"), backLink()));
  }
  markNav(path);
  checkHealth();
}

function backLink() {
  return h("p", {}, h("a", { href: "/inspect", "data-link": true }, "Back to the sessions"));
}

function notAnId(kind, id) {
  fill(view, h("section", { class: "page", "data-testid": "not-an-id" },
    h("h1", {}, `Not a ${kind} id`),
    h("p", { class: "banner warning" }, `“${id}” is not a UUID.`),
    backLink()));
}

function markNav(path) {
  document.querySelectorAll(".topbar nav a").forEach((link) => {
    link.classList.toggle("current", path === link.getAttribute("href"));
  });
}

// The page's own links change the view without a reload; others (and new tabs) go as usual.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", route);

// Following an agent from the top bar.
const follow = document.getElementById("follow-form");
follow.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = follow.elements.agentId;
  const id = input.value.trim();
  if (!UUID.test(id)) {
    input.setCustomValidity("An agent id is a UUID");
    input.reportValidity();
    return;
  }
  input.value = "";
  navigate(`/inspect/agents/${id.toLowerCase()}`);
});
follow.elements.agentId.addEventListener("input", (event) => event.target.setCustomValidity(""));

// The key: shown as set, and forgotten on request (the next request asks again).
const forget = document.getElementById("forget-key");
const showKey = (set) => {
  forget.hidden = !set;
};
forget.addEventListener("click", () => {
  setApiKey(null);
  route();
});
onKeyChange(showKey);
showKey(Boolean(apiKey()));

// The server's health, which needs no key; it also sets the offset of the server's clock.
const status = document.getElementById("server-status");
async function checkHealth() {
  try {
    const report = await health();
    status.dataset.state = report.status;
    fill(status,
      h("span", { class: "dot" }),
      `${report.status} · ${report.activeSessions} active · ${report.expiringSoon} expiring soon`);
  } catch {
    status.dataset.state = "down";
    fill(status, h("span", { class: "dot" }), "server unreachable");
  }
}

route();
setInterval(checkHealth, 15_000);
setInterval(tick, 250);
