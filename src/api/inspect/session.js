// One session: its info and timeout, its messages as a tree, its events live, and the
// actions on it.

import { API, request } from "./api.js";
import { confirmAction, editTimeout, notify } from "./dialogs.js";
import { h, fill, shortId, jsonBlock } from "./dom.js";
import { follow } from "./events.js";
import { clockTime, countdown, dateTime, eventClass, minutes, stateAt, updateCountdown } from "./format.js";
import { buildTree, drawTree } from "./tree.js";

// Enough for any conversation a person reads; a longer one shows its newest messages.
const MAX_MESSAGES = 2000;
const PAGE = 100;
// Events kept in the log on the page.
const MAX_LOG = 200;
// How long events may wait to be drawn together.
const RENDER_DELAY_MS = 30;
// How long a message that just arrived stays marked.
const FRESH_MS = 4000;

/**
 * Draws the session `id` into `root`. `known` is its SessionInfo when the page came from the
 * list (an expired session can no longer be read, but the list still has it). Returns the
 * function that stops it.
 */
export function sessionView(root, id, { known, navigate }) {
  const state = {
    info: known ?? null,
    // Why the session can no longer be used: "expired", "deleted", or "missing" (the server
    // has no such session, deleted or never made).
    gone: null,
    messages: new Map(),
    truncated: false,
    selectedId: null,
    thread: new Set(),
    fresh: new Set(),
    open: new Set(),
    log: [],
    loaded: false,
    pending: [],
  };

  const el = {
    status: h("span", { class: "badge", "data-testid": "session-status" }, "loading"),
    banner: h("div", { class: "banner", "data-testid": "session-banner", hidden: true }),
    actionError: h("p", { class: "action-error", "data-testid": "action-error", hidden: true }),
    countdown: null,
    expiry: h("div", { class: "card expiry-card" }),
    expiryHead: h("h2", {}, "Expires in"),
    info: h("div", { class: "card" }),
    timeout: h("div", { class: "card" }),
    streamState: h("span", { class: "stream-state", "data-testid": "stream-state", "data-state": "connecting" }, "connecting"),
    log: h("ol", { class: "event-log", "data-testid": "event-log" }),
    noEvents: h("p", { class: "muted small" }, "Events on this session appear here as they happen."),
    treeHead: h("span", { class: "muted" }),
    tree: h("div", { class: "tree-scroll" }),
    detail: h("div", { class: "card detail-card", "data-testid": "message-detail", hidden: true }),
  };

  const action = (label, testid, run, extra = {}) =>
    h("button", { type: "button", class: ["button", extra.danger && "danger"], "data-testid": testid, onclick: run }, label);
  const buttons = {
    renew: action("Renew", "action-renew", () => renew()),
    heartbeat: action("Heartbeat", "action-heartbeat", () => heartbeat()),
    timeout: action("Change timeout", "action-timeout", () => changeTimeout()),
    delete: action("Delete", "action-delete", () => remove(), { danger: true }),
  };

  fill(
    root,
    h(
      "section",
      { class: "page session-page", "data-testid": "session-view", "data-session-id": id },
      h(
        "div",
        { class: "page-head" },
        h("div", {},
          h("a", { href: "/inspect", class: "back", "data-link": true }, "← Sessions"),
          h("h1", {}, "Session ", h("code", { class: "id-full", "data-testid": "session-id" }, id), " ", el.status)),
        h("div", { class: "actions" }, Object.values(buttons)),
      ),
      el.actionError,
      el.banner,
      h(
        "div",
        { class: "session-grid" },
        h(
          "aside",
          { class: "side" },
          el.expiry,
          el.info,
          el.timeout,
          h("div", { class: "card" },
            h("h2", {}, "Events ", el.streamState),
            el.noEvents,
            el.log),
        ),
        h(
          "div",
          { class: "main" },
          h("div", { class: "card tree-card" },
            h("div", { class: "card-head" },
              h("h2", {}, "Messages"),
              el.treeHead,
              h("span", { class: "legend" }, h("span", { class: "author user" }, "user"), h("span", { class: "author agent" }, "agent"))),
            el.tree),
          el.detail,
        ),
      ),
    ),
  );

  // The stream first, so that nothing that happens while the page loads is missed: events
  // that arrive before the messages are read wait in `pending`.
  let streamLive;
  const live = new Promise((resolve) => (streamLive = resolve));
  const stream = follow(`${API}/sessions/${id}/events`, {
    isFinal: (name) => name === "session.expired" || name === "session.deleted",
    onEvent: (event) => {
      if (state.loaded) apply(event);
      else state.pending.push(event);
    },
    onState: (streamState, error) => {
      el.streamState.dataset.state = streamState;
      el.streamState.textContent = streamState;
      if (error) el.streamState.title = error.message;
      if (streamState !== "connecting") streamLive();
    },
  });
  // A stream that does not open within a few seconds does not hold up the page.
  const loading = Promise.race([live, new Promise((resolve) => setTimeout(resolve, 3000))]).then(load);

  async function load() {
    try {
      state.info = await request("GET", `/sessions/${id}`);
      await loadMessages();
    } catch (error) {
      failed(error);
    }
    state.loaded = true;
    for (const event of state.pending.splice(0)) apply(event, { replay: true });
    render();
  }

  async function loadMessages() {
    let beforeSeq = null;
    for (;;) {
      const page = await request("GET", `/sessions/${id}/messages?limit=${PAGE}${beforeSeq ? `&beforeSeq=${beforeSeq}` : ""}`);
      for (const message of page.messages) state.messages.set(message.id, message);
      if (!page.hasMore || !page.cursors) return;
      if (state.messages.size >= MAX_MESSAGES) {
        state.truncated = true;
        return;
      }
      beforeSeq = page.cursors.beforeSeq;
    }
  }

  /** A session that cannot be read: say why, from the server's own message. */
  function failed(error) {
    if (error.code === "SESSION_EXPIRED") state.gone = "expired";
    else if (error.code === "SESSION_NOT_FOUND") state.gone = "missing";
    showBanner(error.message + (error.details ? ` — ${error.details}` : ""), "warning");
  }

  function showBanner(text, kind) {
    el.banner.hidden = false;
    el.banner.className = `banner ${kind}`;
    el.banner.textContent = text;
  }

  function apply(event, { replay = false } = {}) {
    logEvent(event);
    const data = event.data;
    switch (event.name) {
      case "message":
        if (!state.messages.has(data.id)) {
          state.messages.set(data.id, data);
          if (state.info) state.info = { ...state.info, messageCount: Math.max(state.info.messageCount, state.messages.size) };
          if (!replay) markFresh(data.id);
        }
        break;
      case "session.expired":
        state.info = data;
        state.gone = "expired";
        showBanner("The session has expired: it can no longer be renewed or take messages.", "warning");
        break;
      case "session.deleted":
        state.info = data;
        state.gone = "deleted";
        showBanner("The session was deleted.", "danger");
        break;
      default:
        if (event.name.startsWith("session.") && data && typeof data === "object" && newer(data, state.info)) state.info = data;
    }
    if (state.loaded && !replay) renderSoon();
  }

  // A burst of events (a busy session, a replay after a reconnect) redraws the page once.
  let renderPending = false;
  function renderSoon() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(() => {
      renderPending = false;
      render();
    }, RENDER_DELAY_MS);
  }

  /** Whether `next` is at least as recent a view of the session as `current`. */
  function newer(next, current) {
    if (!current) return true;
    return next.renewalCount >= current.renewalCount && Date.parse(next.lastActivity) >= Date.parse(current.lastActivity);
  }

  function markFresh(messageId) {
    state.fresh.add(messageId);
    setTimeout(() => {
      state.fresh.delete(messageId);
      el.tree.querySelector(`[data-message-id="${CSS.escape(messageId)}"] > .message`)?.classList.remove("fresh");
    }, FRESH_MS);
  }

  function logEvent(event) {
    el.noEvents.remove();
    const data = event.data ?? {};
    let summary = "";
    if (event.name === "message") summary = `#${data.seq} ${data.isAgent ? "agent" : "user"}: ${String(data.content ?? "").slice(0, 80)}`;
    else if (data.expiresAt) summary = `${event.name === "session.expired" ? "expired at" : "expires"} ${dateTime(data.expiresAt)} · renewals ${data.renewalCount}`;
    el.log.prepend(
      h("li", { "data-testid": "event-entry", "data-event": event.name },
        h("time", {}, clockTime()),
        h("span", { class: ["event-name", eventClass(event.name)] }, event.name),
        h("code", { class: "event-id", title: `event id ${event.id ?? ""}` }, String(event.id ?? "")),
        h("span", { class: "event-summary" }, summary)),
    );
    while (el.log.childElementCount > MAX_LOG) el.log.lastElementChild.remove();
  }

  function render() {
    renderStatus();
    renderInfo();
    renderTree();
    renderDetail();
  }

  function renderStatus() {
    const info = state.info;
    const status = state.gone ?? (info ? stateAt(info) : "unknown");
    const label = { active: "active", warning: "expiring soon", expired: "expired", deleted: "deleted", missing: "not found", unknown: "unknown" }[status];
    el.status.textContent = label;
    el.status.dataset.state = status;
    el.expiryHead.textContent = { deleted: "Deleted", expired: "Expired", missing: "Not found" }[status] ?? "Expires in";
    const usable = !state.gone && info && status !== "expired";
    buttons.renew.disabled = !usable;
    buttons.heartbeat.disabled = !usable;
    buttons.timeout.disabled = !usable;
    buttons.delete.disabled = state.gone === "deleted" || state.gone === "missing";
  }

  function renderInfo() {
    const info = state.info;
    if (!info) {
      fill(el.expiry, el.expiryHead, h("p", { class: "muted" }, "—"));
      fill(el.info, h("h2", {}, "Session"), h("p", { class: "muted" }, "No details: the server no longer has this session."));
      fill(el.timeout);
      el.timeout.hidden = true;
      return;
    }
    el.timeout.hidden = false;
    const ended = state.gone === "deleted" ? "deleted" : state.gone === "expired" ? "expired" : null;
    if (!el.countdown) {
      el.countdown = countdown(info, { ended, testid: "session-countdown" });
      el.countdown.classList.add("big");
      // The badge follows the countdown: expiry shows the moment it comes.
      el.countdown.addEventListener("countdownstate", () => renderStatus());
    } else {
      updateCountdown(el.countdown, info, ended);
    }
    fill(
      el.expiry,
      el.expiryHead,
      el.countdown,
      h("p", { class: "muted", "data-testid": "expires-at" }, `at ${dateTime(info.expiresAt)}`),
    );
    const tc = info.timeoutConfig;
    fill(
      el.info,
      h("h2", {}, "Session"),
      h("dl", { class: "facts" },
        fact("Agent", h("a", { href: `/inspect/agents/${info.agentId}`, "data-link": true, "data-testid": "agent-link" }, shortId(info.agentId)), "agent-id"),
        fact("User", h("a", { href: `/inspect/users/${info.userId}`, "data-link": true }, shortId(info.userId)), "user-id"),
        fact("Created", dateTime(info.createdAt)),
        fact("Last activity", dateTime(info.lastActivity), "last-activity"),
        fact("Renewals", String(info.renewalCount), "renewal-count"),
        fact("Messages", String(info.messageCount), "message-count")),
      h("details", { class: "metadata" },
        h("summary", {}, `metadata · ${plural(Object.keys(info.metadata ?? {}).length, "key")}`),
        jsonBlock(info.metadata ?? {}, "session-metadata")),
    );
    fill(
      el.timeout,
      h("h2", {}, "Timeout"),
      h("dl", { class: "facts" },
        fact("Timeout", minutes(tc.timeoutMinutes), "timeout-minutes"),
        fact("Renews on activity", tc.autoRenew ? "yes" : "no", "auto-renew"),
        fact("Max duration", minutes(tc.maxDurationMinutes), "max-duration"),
        fact("Warning at", tc.warningThresholdMinutes ? `${minutes(tc.warningThresholdMinutes)} left` : "never", "warning-threshold")),
    );
  }

  function renderTree() {
    const tree = buildTree([...state.messages.values()]);
    const forks = [...tree.nodes.values()].filter((node) => node.children.length > 1).length;
    const count = state.messages.size;
    el.treeHead.textContent =
      plural(count, "message") + (count > 1 ? ` · ${forks ? plural(forks, "fork") : "one branch"}` : "") +
      (state.truncated ? ` · the newest ${count} shown` : "");
    const scroll = el.tree.scrollLeft;
    fill(
      el.tree,
      drawTree(tree, {
        selectedId: state.selectedId,
        thread: state.thread,
        fresh: state.fresh,
        open: state.open,
        loaded: (messageId) => state.messages.has(messageId),
        onSelect: select,
      }),
    );
    el.tree.scrollLeft = scroll;
  }

  function renderDetail() {
    const message = state.messages.get(state.selectedId);
    if (!message) {
      el.detail.hidden = true;
      return;
    }
    el.detail.hidden = false;
    const path = [...state.thread].map((messageId) => state.messages.get(messageId)).filter(Boolean).sort((a, b) => a.seq - b.seq);
    fill(
      el.detail,
      h("div", { class: "card-head" },
        h("h2", {}, `Message #${message.seq}`),
        h("button", { type: "button", class: "button small", onclick: () => select(null) }, "Clear")),
      h("p", { class: "thread-path", "data-testid": "thread-path" },
        "Thread: ",
        path.map((m, index) => [
          index > 0 ? " → " : "",
          h("button", { type: "button", class: ["link", m.isAgent ? "agent" : "user"], onclick: () => select(m.id) }, `#${m.seq}`),
        ])),
      h("dl", { class: "facts" },
        fact("Id", h("code", {}, message.id)),
        fact("Author", `${message.isAgent ? "agent" : "user"} ${message.authorId}`),
        fact("Parent", message.parentId ? h("code", {}, message.parentId) : "none (the first message)"),
        fact("Sent", dateTime(message.createdAt))),
      h("p", { class: "content detail-content", "data-testid": "detail-content" }, message.content),
      h("details", { open: true }, h("summary", {}, "metadata"), jsonBlock(message.metadata ?? {}, "detail-metadata")),
      (message.attachments ?? []).length > 0 &&
        h("details", { open: true }, h("summary", {}, "attachments"), jsonBlock(message.attachments, "detail-attachments")),
    );
  }

  /** Selects a message and highlights its thread: at once from the messages here, then as the server has it. */
  async function select(messageId) {
    state.selectedId = messageId;
    state.thread = new Set();
    for (let m = state.messages.get(messageId); m; m = state.messages.get(m.parentId)) state.thread.add(m.id);
    renderTree();
    renderDetail();
    if (!messageId || state.gone) return;
    try {
      const thread = await request("GET", `/sessions/${id}/messages/${messageId}/thread`);
      if (state.selectedId !== messageId) return;
      state.thread = new Set(thread.messages.map((m) => m.id));
      renderTree();
      renderDetail();
    } catch {
      // The thread from the messages here stands.
    }
  }

  async function act(run, done) {
    el.actionError.hidden = true;
    try {
      const body = await run();
      done(body);
    } catch (error) {
      el.actionError.textContent = error.message + (error.details ? ` (${error.details})` : "");
      el.actionError.hidden = false;
      notify(error.message, "error");
    }
  }

  function updated(verb) {
    return (info) => {
      if (newer(info, state.info)) state.info = info;
      render();
      notify(`${verb}: expires ${dateTime(info.expiresAt)}`);
    };
  }

  async function renew() {
    const ok = await confirmAction({
      title: "Renew the session?",
      message: `Its expiry moves to ${minutes(state.info.timeoutConfig.timeoutMinutes)} from now, within its maximum duration.`,
      confirm: "Renew",
    });
    if (ok) await act(() => request("POST", `/sessions/${id}/renew`), updated("Renewed"));
  }

  async function heartbeat() {
    const ok = await confirmAction({
      title: "Send a heartbeat?",
      message: state.info.timeoutConfig.autoRenew
        ? "Records activity now, which renews the session (autoRenew is on)."
        : "Records activity now; autoRenew is off, so the expiry stays.",
      confirm: "Send heartbeat",
    });
    if (ok) await act(() => request("POST", `/sessions/${id}/heartbeat`), updated("Heartbeat sent"));
  }

  async function changeTimeout() {
    const changes = await editTimeout(state.info.timeoutConfig);
    if (changes) await act(() => request("PATCH", `/sessions/${id}/timeout`, changes), updated("Timeout changed"));
  }

  async function remove() {
    const ok = await confirmAction({
      title: "Delete the session?",
      message: `Session ${id} and all its messages are removed for good.`,
      confirm: "Delete",
      danger: true,
    });
    if (!ok) return;
    await act(
      () => request("DELETE", `/sessions/${id}`),
      () => {
        notify(`Session ${id.slice(0, 8)}… deleted`);
        navigate("/inspect");
      },
    );
  }

  return () => {
    stream.close();
    loading.catch(() => {});
  };
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function fact(label, value, testid) {
  return [h("dt", {}, label), h("dd", { "data-testid": testid }, value)];
}
