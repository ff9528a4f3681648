// Building the page out of DOM nodes. Every piece of data becomes a text node: nothing a
// session holds is ever parsed as HTML, so a message that looks like markup shows as the
// characters it is.

/**
 * An element: `h("div", { class: "card", "data-testid": "x", onclick: f }, child, …)`.
 * Children are nodes, strings (as text), numbers, or arrays of these; null and false are
 * skipped.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

/** Appends children as `h` takes them. */
export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replaces everything inside `parent`. */
export function fill(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

/**
 * A UUID shortened for display, its first and last characters (time-ordered v7 ids made
 * together share their first ones); the whole id stays in the title.
 */
export function shortId(id) {
  return h("code", { class: "id", title: id }, id ? `${id.slice(0, 8)}…${id.slice(-4)}` : "—");
}

/** JSON, pretty-printed, as text. */
export function jsonBlock(value, testid) {
  return h("pre", { class: "json", "data-testid": testid }, JSON.stringify(value, null, 2));
}
