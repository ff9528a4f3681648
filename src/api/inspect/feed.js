// An agent's (or a user's) events as a live feed: what the agent process itself would read
// from GET /events?agentId=….

import { API, query } from "./api.js";
import { h, fill, shortId } from "./dom.js";
import { follow } from "./events.js";
import { clockTime, dateTime, eventClass } from "./format.js";

// Entries kept on the page; the oldest go first.
const MAX_ENTRIES = 500;

/** Draws the feed of `kind` ("agent" or "user") `id` into `root`; returns the function that stops it. */
export function feedView(root, kind, id, { search, navigate }) {
  const replay = new URLSearchParams(search).get("replay") === "1";
  const parameter = kind === "agent" ? "agentId" : "userId";
  const state = h("span", { class: "stream-state", "data-testid": "stream-state", "data-state": "connecting" }, "connecting");
  const entries = h("ol", { class: "feed", "data-testid": "feed" });
  const empty = h("p", { class: "empty", "data-testid": "feed-empty" },
    replay ? "No events kept for this " + kind + "." : "Waiting for events… new sessions, messages, renewals and expiries appear here as they happen.");
  const counter = h("span", { class: "muted", "data-testid": "feed-count" }, "0 events");
  let count = 0;

  const replayToggle = h("input", { type: "checkbox", checked: replay, "data-testid": "feed-replay" });
  replayToggle.addEventListener("change", () =>
    navigate(`/inspect/${kind}s/${id}${replayToggle.checked ? "?replay=1" : ""}`));

  fill(
    root,
    h(
      "section",
      { class: "page", "data-testid": "feed-view", "data-kind": kind },
      h("div", { class: "page-head" },
        h("div", {},
          h("a", { href: "/inspect", class: "back", "data-link": true }, "← Sessions"),
          h("h1", {}, kind === "agent" ? "Agent " : "User ", h("code", { class: "id-full", "data-testid": "feed-id" }, id), " ", state)),
        h("div", { class: "actions" },
          h("label", { class: "toggle" }, replayToggle, h("span", {}, "From the oldest kept event")),
          h("a", { class: "button", href: `/inspect${query({ [parameter]: id, status: "all" })}`, "data-link": true }, `Sessions of this ${kind}`),
          h("button", { type: "button", class: "button", onclick: () => { fill(entries); count = 0; counter.textContent = "0 events"; entries.before(empty); } }, "Clear"))),
      h("div", { class: "card feed-card" },
        h("div", { class: "card-head" }, h("h2", {}, "Live events"), counter,
          h("code", { class: "muted small" }, `GET ${API}/events?${parameter}=…`)),
        empty,
        entries),
    ),
  );

  const stream = follow(`${API}/events${query({ [parameter]: id })}`, {
    after: replay ? 0 : null,
    onState: (streamState, error) => {
      state.dataset.state = streamState;
      state.textContent = streamState;
      if (error) {
        empty.textContent = error.message + (error.details ? ` — ${error.details}` : "");
        empty.classList.add("error-text");
      }
    },
    onEvent: (event) => {
      empty.remove();
      count += 1;
      counter.textContent = `${count} ${count === 1 ? "event" : "events"}`;
      entries.prepend(entry(event));
      while (entries.childElementCount > MAX_ENTRIES) entries.lastElementChild.remove();
    },
  });

  function entry(event) {
    const data = event.data && typeof event.data === "object" ? event.data : {};
    const sessionId = data.sessionId;
    const isMessage = event.name === "message";
    return h(
      "li",
      { class: ["feed-entry", isMessage ? (data.isAgent ? "agent" : "user") : "session"], "data-testid": "feed-entry", "data-event": event.name, "data-session-id": sessionId ?? "" },
      h("div", { class: "feed-meta" },
        h("time", {}, clockTime()),
        h("span", { class: ["event-name", eventClass(event.name)] }, event.name),
        h("code", { class: "event-id", title: "event id" }, String(event.id ?? "")),
        sessionId && h("a", { href: `/inspect/sessions/${sessionId}`, "data-link": true, class: "small" }, "session ", shortId(sessionId))),
      isMessage
        ? h("div", { class: "feed-body" },
            h("span", { class: ["author", data.isAgent ? "agent" : "user"] }, data.isAgent ? "agent" : "user"),
            h("span", { class: "seq" }, `#${data.seq}`),
            h("p", { class: "content", "data-testid": "feed-content" }, String(data.content ?? "")))
        : h("div", { class: "feed-body muted small" },
            data.expiresAt ? `${event.name === "session.expired" ? "expired at" : "expires"} ${dateTime(data.expiresAt)} · renewals ${data.renewalCount} · ${data.messageCount} ${data.messageCount === 1 ? "message" : "messages"}` : ""),
    );
  }

  return () => stream.close();
}
