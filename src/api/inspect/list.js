// The sessions list: filters, newest first, paged with the list's cursor.

import { request, query } from "./api.js";
import { h, fill, shortId } from "./dom.js";
import { countdown, dateTime } from "./format.js";

const LIMITS = [25, 50, 100, 200];

/** Draws the list into `root`, with its filters read from and kept in the address. */
export function listView(root, { search, navigate }) {
  const params = new URLSearchParams(search);
  const limit = Number.parseInt(params.get("limit") ?? "", 10);
  const filters = {
    agentId: params.get("agentId") ?? "",
    userId: params.get("userId") ?? "",
    status: params.get("status") ?? "active",
    // The server's own bounds: 1 ..= 1000.
    limit: limit > 0 ? Math.min(limit, 1000) : 25,
  };
  // The cursors of the pages before this one, to go back; the server pages forward only.
  const previous = [];
  let cursor = null;

  const input = (name, placeholder) =>
    h("input", { type: "text", name, value: filters[name], placeholder, spellcheck: "false", autocomplete: "off", "data-testid": `filter-${name}` });
  const select = (name, options) => {
    const element = h("select", { name, "data-testid": `filter-${name}` },
      options.map(([value, label]) => h("option", { value }, label)));
    element.value = String(filters[name]);
    return element;
  };
  const form = h(
    "form",
    {
      class: "card filters",
      "data-testid": "filters",
      onsubmit: (event) => {
        event.preventDefault();
        const next = new URLSearchParams();
        for (const name of ["agentId", "userId", "status", "limit"]) {
          const value = form.elements[name].value.trim();
          if (value && !(name === "status" && value === "active") && !(name === "limit" && value === "25")) next.set(name, value);
        }
        const text = next.toString();
        navigate(`/inspect${text ? `?${text}` : ""}`);
      },
    },
    h("label", { class: "field" }, h("span", {}, "Agent"), input("agentId", "agent id")),
    h("label", { class: "field" }, h("span", {}, "User"), input("userId", "user id")),
    h("label", { class: "field narrow" }, h("span", {}, "Status"),
      select("status", [["active", "active"], ["expired", "expired"], ["all", "all"]])),
    h("label", { class: "field narrow" }, h("span", {}, "Per page"),
      // A size given in the address (?limit=…) is offered too.
      select("limit", [...new Set([...LIMITS, filters.limit])].sort((a, b) => a - b).map((n) => [String(n), String(n)]))),
    h("div", { class: "filter-buttons" },
      h("button", { type: "submit", class: "button primary", "data-testid": "filter-apply" }, "Apply"),
      h("a", { href: "/inspect", class: "button", "data-link": true }, "Clear")),
  );

  const stats = h("div", { class: "stats", "data-testid": "stats" });
  const error = h("p", { class: "banner danger", "data-testid": "list-error", hidden: true });
  const body = h("tbody", {});
  const table = h(
    "table",
    { class: "sessions", "data-testid": "sessions-table" },
    h("thead", {},
      h("tr", {},
        h("th", {}, "Session"),
        h("th", {}, "Agent"),
        h("th", {}, "User"),
        h("th", { class: "num" }, "Messages"),
        h("th", { class: "num" }, "Renewals"),
        h("th", {}, "Last activity"),
        h("th", {}, "Expires in"))),
    body,
  );
  const pageLabel = h("span", { class: "muted", "data-testid": "page-label" });
  const newer = h("button", { type: "button", class: "button", "data-testid": "page-newer", onclick: () => load(previous.pop() ?? null, true) }, "← Newer");
  const older = h("button", { type: "button", class: "button", "data-testid": "page-older" }, "Older →");
  const refresh = h("button", { type: "button", class: "button", "data-testid": "refresh", onclick: () => load(cursor, true) }, "Refresh");

  fill(
    root,
    h(
      "section",
      { class: "page", "data-testid": "sessions-view" },
      h("div", { class: "page-head" }, h("h1", {}, "Sessions"), stats, refresh),
      form,
      error,
      h("div", { class: "card table-card" }, table, h("div", { class: "pager" }, newer, pageLabel, older)),
    ),
  );

  let generation = 0;
  async function load(at, replacing = false) {
    const mine = ++generation;
    error.hidden = true;
    let page;
    try {
      page = await request("GET", `/sessions${query({ ...filters, cursor: at })}`);
    } catch (problem) {
      if (mine !== generation) return;
      error.textContent = problem.message + (problem.details ? ` — ${problem.details}` : "");
      error.hidden = false;
      fill(body);
      return;
    }
    if (mine !== generation) return;
    if (!replacing && cursor !== at) previous.push(cursor);
    cursor = at;
    fill(
      stats,
      h("span", { "data-testid": "stat-total" }, `${page.total} matching`),
      h("span", {}, `${page.stats.activeSessions} active`),
      h("span", {}, `${page.stats.expiredSessions} expired`),
    );
    fill(body, page.sessions.length ? page.sessions.map(row) : h("tr", {}, h("td", { colspan: 7, class: "empty", "data-testid": "no-sessions" }, "No sessions match.")));
    const pageNumber = previous.length + 1;
    pageLabel.textContent = `page ${pageNumber}${page.sessions.length ? ` · ${page.sessions.length} shown` : ""}`;
    newer.disabled = previous.length === 0;
    older.disabled = !page.nextCursor;
    older.onclick = () => load(page.nextCursor);
  }

  function row(session) {
    const open = () => navigate(`/inspect/sessions/${session.sessionId}`, { session });
    return h(
      "tr",
      {
        "data-testid": "session-row",
        "data-session-id": session.sessionId,
        class: "clickable",
        onclick: (event) => {
          if (!event.target.closest("a")) open();
        },
      },
      h("td", {},
        h("a", { href: `/inspect/sessions/${session.sessionId}`, "data-link": true, "data-testid": "session-link", onclick: (event) => { event.preventDefault(); open(); } }, shortId(session.sessionId)),
        h("div", { class: "muted small" }, dateTime(session.createdAt))),
      h("td", {}, h("a", { href: `/inspect/agents/${session.agentId}`, "data-link": true }, shortId(session.agentId))),
      h("td", { "data-testid": "row-user" }, h("a", { href: `/inspect/users/${session.userId}`, "data-link": true }, shortId(session.userId))),
      h("td", { class: "num", "data-testid": "row-messages" }, String(session.messageCount)),
      h("td", { class: "num", "data-testid": "row-renewals" }, String(session.renewalCount)),
      h("td", { class: "small" }, dateTime(session.lastActivity)),
      h("td", {}, countdown(session)),
    );
  }

  load(null, true);
  return () => {
    generation++;
  };
}
