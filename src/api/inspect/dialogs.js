// Modal dialogs (confirmation, the API key, the timeout form) and notices.

import { h } from "./dom.js";

/** Shows `dialog` modally; resolves with what `decide` returns when it closes. */
function modal(dialog, decide) {
  return new Promise((resolve) => {
    document.body.append(dialog);
    dialog.addEventListener("close", () => {
      const outcome = decide(dialog.returnValue);
      dialog.remove();
      resolve(outcome);
    });
    dialog.showModal();
  });
}

/** A form whose submit closes `dialog` with "ok" once `check` passes (it returns an error text or null). */
function dialogForm(dialog, children, check = () => null) {
  const error = h("p", { class: "form-error", "data-testid": "dialog-error", hidden: true });
  const form = h(
    "form",
    {
      // Forms never submit anywhere (the policy forbids it): the dialog reads the fields.
      onsubmit: (event) => {
        event.preventDefault();
        const problem = check(form);
        if (problem) {
          error.textContent = problem;
          error.hidden = false;
          return;
        }
        dialog.close("ok");
      },
    },
    children,
    error,
  );
  return form;
}

function buttons(confirmLabel, { danger = false, testid = "confirm-ok" } = {}) {
  return h(
    "div",
    { class: "dialog-buttons" },
    h("button", { type: "button", class: "button", "data-testid": "confirm-cancel", onclick: (e) => e.target.closest("dialog").close("cancel") }, "Cancel"),
    h("button", { type: "submit", class: ["button", danger ? "danger" : "primary"], "data-testid": testid }, confirmLabel),
  );
}

/** Asks before an action: resolves true when confirmed. */
export function confirmAction({ title, message, confirm, danger = false }) {
  const dialog = h("dialog", { class: "dialog", "data-testid": "confirm-dialog" });
  dialog.append(
    dialogForm(dialog, [
      h("h2", {}, title),
      h("p", { class: "dialog-message", "data-testid": "confirm-message" }, message),
      buttons(confirm, { danger }),
    ]),
  );
  return modal(dialog, (value) => value === "ok");
}

/** Asks for the API key; resolves to the key, or null when cancelled. */
export function askForKey(refused) {
  const dialog = h("dialog", { class: "dialog", "data-testid": "key-dialog" });
  const input = h("input", {
    type: "password",
    name: "apiKey",
    autocomplete: "off",
    required: true,
    "data-testid": "key-input",
    "aria-label": "API key",
  });
  dialog.append(
    dialogForm(dialog, [
      h("h2", {}, "API key"),
      h(
        "p",
        { class: "dialog-message" },
        refused
          ? "The server refused that key. Enter the key it was started with (--api-key)."
          : "This server needs an API key (--api-key). It is kept in this tab only and sent as X-API-Key.",
      ),
      h("label", { class: "field" }, h("span", {}, "Key"), input),
      buttons("Use key", { testid: "key-submit" }),
    ]),
  );
  const answer = modal(dialog, (value) => (value === "ok" && input.value ? input.value : null));
  input.focus();
  return answer;
}

/**
 * The timeout form, filled with `config`; resolves to the fields changed (a partial
 * timeoutConfig, as PATCH takes it), or null when cancelled or nothing changed.
 */
export function editTimeout(config) {
  const dialog = h("dialog", { class: "dialog", "data-testid": "timeout-dialog" });
  const number = (name, label, hint) =>
    h(
      "label",
      { class: "field" },
      h("span", {}, label),
      h("input", { type: "number", name, min: 0, step: 1, value: config[name], "data-testid": `timeout-${name}` }),
      h("small", {}, hint),
    );
  const autoRenew = h("input", { type: "checkbox", name: "autoRenew", checked: config.autoRenew, "data-testid": "timeout-autoRenew" });
  const integerFields = ["timeoutMinutes", "maxDurationMinutes", "warningThresholdMinutes"];
  const check = (form) => {
    for (const name of integerFields) {
      const text = form.elements[name].value.trim();
      if (text !== "" && !/^\d+$/.test(text)) return `${name} must be a whole number of minutes`;
    }
    return null;
  };
  const form = dialogForm(
    dialog,
    [
      h("h2", {}, "Change the timeout"),
      h("p", { class: "dialog-message" }, "Fields left as they are keep their values. The server checks the ranges."),
      number("timeoutMinutes", "Timeout (minutes)", "inactivity before the session expires"),
      number("maxDurationMinutes", "Max duration (minutes)", "from creation, whatever the renewals"),
      number("warningThresholdMinutes", "Warning threshold (minutes)", "0: never warn"),
      h("label", { class: "field checkbox" }, autoRenew, h("span", {}, "Renew on activity (autoRenew)")),
      buttons("Save", { testid: "timeout-save" }),
    ],
    check,
  );
  dialog.append(form);
  return modal(dialog, (value) => {
    if (value !== "ok") return null;
    const changed = {};
    for (const name of integerFields) {
      const text = form.elements[name].value.trim();
      if (text !== "" && Number(text) !== config[name]) changed[name] = Number(text);
    }
    if (autoRenew.checked !== config.autoRenew) changed.autoRenew = autoRenew.checked;
    return Object.keys(changed).length ? changed : null;
  });
}

/** A notice in the corner: "ok" goes after a few seconds, an error stays until closed. */
export function notify(text, kind = "ok") {
  let box = document.getElementById("notices");
  if (!box) {
    box = h("div", { id: "notices", class: "notices", "aria-live": "polite" });
    document.body.append(box);
  }
  const notice = h(
    "div",
    { class: ["notice", kind], "data-testid": kind === "error" ? "error-notice" : "notice", role: kind === "error" ? "alert" : "status" },
    h("span", {}, text),
    h("button", { type: "button", class: "notice-close", "aria-label": "Dismiss", onclick: () => notice.remove() }, "×"),
  );
  box.append(notice);
  if (kind !== "error") setTimeout(() => notice.remove(), 4000);
  return notice;
}
