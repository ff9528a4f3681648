// A session's messages drawn as the tree their parentIds make.
//
// A run of single replies is drawn as one column (a plain chat does not drift right); where a
// message has several replies, each reply starts a branch, drawn side by side under it. So
// the drawing keeps the structure: a message's parent is the message above it in its
// column, or, for the first of a branch, the message the branch hangs from.

import { h } from "./dom.js";
import { dateTime } from "./format.js";

/** The tree of `messages`: nodes `{ message, children }`, children in the order sent. */
export function buildTree(messages) {
  const nodes = new Map();
  for (const message of messages) nodes.set(message.id, { message, children: [] });
  const roots = [];
  for (const node of [...nodes.values()].sort((a, b) => a.message.seq - b.message.seq)) {
    const parent = node.message.parentId ? nodes.get(node.message.parentId) : null;
    if (parent) parent.children.push(node);
    else roots.push(node);
  }
  return { nodes, roots };
}

/**
 * The drawing of `tree`. `view` says what to mark: `selectedId`, `thread` (a Set of ids on
 * the selected message's thread), `fresh` (ids that just arrived), `open` (keys of the
 * expanded details), and `onSelect(id)` for a click on a message.
 */
export function drawTree(tree, view) {
  const container = h("div", {
    class: ["tree", view.selectedId && "has-selection"],
    "data-testid": "message-tree",
  });
  if (tree.roots.length === 0) {
    container.append(h("p", { class: "empty", "data-testid": "no-messages" }, "No messages yet."));
    return container;
  }
  for (const root of tree.roots) container.append(chain(root, view));
  return container;
}

/** One column: `node`, then its only reply, and so on, down to a fork or a leaf. */
function chain(start, view) {
  const list = h("ol", { class: "chain" });
  let node = start;
  for (;;) {
    const item = nodeElement(node, view);
    list.append(item);
    if (node.children.length === 1) {
      node = node.children[0];
      continue;
    }
    if (node.children.length > 1) item.append(fork(node.children, view));
    return list;
  }
}

function fork(children, view) {
  return h(
    "div",
    { class: "fork", "data-testid": "fork" },
    children.map((child, index) =>
      h(
        "div",
        { class: "branch", "data-testid": "branch" },
        h("div", { class: "branch-label" }, `branch ${index + 1} of ${children.length}`),
        chain(child, view),
      ),
    ),
  );
}

function nodeElement(node, view) {
  const m = node.message;
  const role = m.isAgent ? "agent" : "user";
  const missingParent = m.parentId && !view.loaded(m.parentId);
  const card = h(
    "article",
    {
      class: [
        "message",
        role,
        view.selectedId === m.id && "selected",
        view.thread.has(m.id) && "in-thread",
        view.fresh.has(m.id) && "fresh",
      ],
      tabindex: 0,
      "data-testid": "message",
      "aria-label": `${role} message ${m.seq}`,
      onclick: (event) => {
        // Opening a details box is not a selection.
        if (event.target.closest("details")) return;
        view.onSelect(m.id);
      },
      onkeydown: (event) => {
        if (event.key === "Enter" && event.target === event.currentTarget) view.onSelect(m.id);
      },
    },
    h(
      "header",
      { class: "message-head" },
      h("span", { class: ["author", role], "data-testid": "message-author" }, role),
      h("span", { class: "seq", title: m.id }, `#${m.seq}`),
      h("time", { datetime: m.createdAt, title: m.createdAt }, dateTime(m.createdAt).slice(11)),
      node.children.length > 1 && h("span", { class: "replies" }, `${node.children.length} replies`),
    ),
    missingParent && h("p", { class: "orphan" }, `reply to ${m.parentId.slice(0, 8)}…, not loaded`),
    h("p", { class: "content", "data-testid": "message-content" }, m.content),
    extras(m, view),
  );
  return h(
    "li",
    {
      class: "node",
      "data-testid": "message-node",
      "data-message-id": m.id,
      "data-parent-id": m.parentId ?? "",
      "data-seq": m.seq,
    },
    card,
  );
}

/** Metadata and attachments, folded. */
function extras(m, view) {
  const metadata = m.metadata && typeof m.metadata === "object" ? m.metadata : {};
  const attachments = Array.isArray(m.attachments) ? m.attachments : [];
  const keys = Object.keys(metadata).length;
  return h(
    "div",
    { class: "extras" },
    folded(view, `metadata:${m.id}`, `metadata · ${keys} ${keys === 1 ? "key" : "keys"}`, "message-metadata",
      h("pre", { class: "json" }, JSON.stringify(metadata, null, 2))),
    attachments.length > 0 &&
      folded(view, `attachments:${m.id}`, `attachments · ${attachments.length}`, "message-attachments",
        h(
          "ul",
          { class: "attachments" },
          attachments.map((a) =>
            h(
              "li",
              {},
              h("span", { class: "tag" }, String(a.type ?? "")),
              " ",
              h("strong", {}, a.name ? String(a.name) : "(no name)"),
              h("code", { class: "url" }, String(a.url ?? "")),
            ),
          ),
        )),
  );
}

function folded(view, key, summary, testid, body) {
  const details = h("details", { "data-key": key, "data-testid": testid, open: view.open.has(key) }, h("summary", {}, summary), body);
  details.addEventListener("toggle", () => {
    if (details.open) view.open.add(key);
    else view.open.delete(key);
  });
  return details;
}
