// Following an event stream. EventSource cannot send X-API-Key, so the stream is read with
// fetch and parsed here (the text/event-stream format), which works with or without a key.
// A dropped stream is reopened with Last-Event-ID, so no event is lost or shown twice.

import { authorizedFetch, errorOf } from "./api.js";

const RETRY_MS = 1000;
const MAX_RETRY_MS = 15_000;

/**
 * Follows the stream at `path`. `onEvent({id, name, data})` gets each event (data parsed
 * as JSON when it is); `onState(state, error)` hears "connecting", "live", "reconnecting",
 * "ended" (the server ended it for good: `isFinal(name)` said so of the last event, or the
 * stream's resource is gone, 404/410, with the error) and "closed" (by `close()`).
 * `after` resumes after that event id (0: every event kept). Returns `{ close() }`.
 */
export function follow(path, { onEvent, onState = () => {}, isFinal = () => false, after = null }) {
  const controller = new AbortController();
  let lastEventId = after;
  let retry = RETRY_MS;
  let finished = false;

  async function run() {
    while (!controller.signal.aborted) {
      onState("connecting");
      let response;
      try {
        const headers = { Accept: "text/event-stream" };
        if (lastEventId !== null) headers["Last-Event-ID"] = String(lastEventId);
        response = await authorizedFetch(path, { headers, signal: controller.signal });
      } catch {
        if (controller.signal.aborted) return;
        await pause();
        continue;
      }
      if (!response.ok) {
        const error = await errorOf(response);
        if (error.code === "LAST_EVENT_ID_UNKNOWN") {
          // The store was replaced: its events are all new to us.
          lastEventId = 0;
          continue;
        }
        // The session is gone (404, 410), the key was not given (401), or the address is
        // wrong (400): asking again would not help. A busy server (503) is asked again.
        if (response.status < 500) {
          onState("ended", error);
          return;
        }
        onState("reconnecting", error);
        await pause();
        continue;
      }
      onState("live");
      retry = RETRY_MS;
      try {
        await read(response.body);
      } catch {
        // A dropped connection; reconnect below.
      }
      if (controller.signal.aborted) return;
      if (finished) {
        onState("ended");
        return;
      }
      onState("reconnecting");
      await pause();
    }
  }

  function pause() {
    const wait = retry;
    retry = Math.min(retry * 2, MAX_RETRY_MS);
    return new Promise((resolve) => setTimeout(resolve, wait));
  }

  async function read(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let data = [];
    let name = "";
    let id = lastEventId;
    const dispatch = () => {
      if (id !== null) lastEventId = id;
      if (data.length === 0) {
        name = "";
        return;
      }
      const text = data.join("\n");
      let parsed = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Not JSON: passed on as text.
      }
      const event = { id: lastEventId, name: name || "message", data: parsed };
      data = [];
      name = "";
      if (isFinal(event.name)) finished = true;
      onEvent(event);
    };
    const line = (text) => {
      if (text === "") return dispatch();
      if (text.startsWith(":")) return; // a keep-alive comment
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") name = value;
      else if (field === "id" && !value.includes("\0")) id = /^\d+$/.test(value) ? Number(value) : value;
      else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
        // A CR last in the buffer may be the first half of a CRLF: wait for the next chunk.
        if (buffer[end] === "\r" && end === buffer.length - 1) break;
        const width = buffer.startsWith("\r\n", end) ? 2 : 1;
        line(buffer.slice(0, end));
        buffer = buffer.slice(end + width);
        if (finished) {
          reader.cancel().catch(() => {});
          return;
        }
      }
    }
  }

  run();
  return {
    close() {
      controller.abort();
      onState("closed");
    },
  };
}
