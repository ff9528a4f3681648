// Every sessions method of the real @elizaos/api-client, against a live sessiond.
//
// Run by tests/elizaos/run.sh, which starts the server and passes:
//   SESSIOND_URL        the server's base URL
//   SESSIOND_API_KEY    the key it was started with (the client sends it as X-API-KEY)
//   ELIZAOS_CLIENT      the path of the installed client's dist/index.js
// The server runs with its default reply timeout and --min-timeout-minutes 0.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import { pathToFileURL } from "node:url";

const { ElizaClient, ApiError } = await import(pathToFileURL(process.env.ELIZAOS_CLIENT).href);

const baseUrl = process.env.SESSIOND_URL;
const apiKey = process.env.SESSIOND_API_KEY;
const client = ElizaClient.create({ baseUrl, apiKey });
const sessions = client.sessions;

/** The client's own abort: a wait for an agent's reply must end before it. */
const CLIENT_TIMEOUT_MS = 30_000;

/** A new session of a fresh agent and user, with `metadata`. */
async function newSession(metadata = { platform: "web", username: "ada" }, extra = {}) {
  const params = { agentId: randomUUID(), userId: randomUUID(), metadata, ...extra };
  const created = await sessions.createSession(params);
  return { params, created, id: created.sessionId };
}

/** Asserts that `promise` rejects with the client's ApiError of `code` and `status`. */
async function rejectsWith(promise, code, status) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof ApiError, `an ApiError, got ${error}`);
    assert.equal(error.code, code);
    assert.equal(error.status, status);
    assert.equal(typeof error.message, "string");
    return true;
  });
}

/**
 * Follows GET /events?agentId= the way hand-written readers do (elizaOS's web UI among
 * them): lines starting with "event: " and "data: ". Calls `onEvent(name, data)` for each
 * event until `signal` aborts. Resolves once the stream is open.
 */
async function followAgent(agentId, signal, onEvent) {
  const response = await fetch(`${baseUrl}/api/messaging/events?agentId=${agentId}`, {
    headers: { "X-API-Key": apiKey },
    signal,
  });
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^text\/event-stream/);
  (async () => {
    const decoder = new TextDecoder();
    let buffer = "";
    let name = null;
    try {
      for await (const chunk of response.body) {
        buffer += decoder.decode(chunk, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.startsWith("event: ")) {
            name = line.slice("event: ".length);
          } else if (line.startsWith("data: ")) {
            await onEvent(name, JSON.parse(line.slice("data: ".length)));
          } else if (line !== "" && !line.startsWith(":") && !line.startsWith("id: ")) {
            throw new Error(`an SSE line without "field: ": ${JSON.stringify(line)}`);
          }
        }
      }
    } catch (error) {
      if (!signal.aborted) throw error;
    }
  })();
}

describe("sessions methods", { concurrency: true }, () => {
  test("checkHealth reports a healthy service", async () => {
    const health = await sessions.checkHealth();
    assert.equal(health.status, "healthy");
    assert.equal(typeof health.activeSessions, "number");
    assert.ok(!Number.isNaN(Date.parse(health.timestamp)));
  });

  test("createSession answers the session with its channelId", async () => {
    const { params, created } = await newSession();
    assert.match(created.sessionId, /^[0-9a-f-]{36}$/);
    assert.equal(created.channelId, created.sessionId);
    assert.equal(created.agentId, params.agentId);
    assert.equal(created.userId, params.userId);
    assert.deepEqual(created.metadata, params.metadata);
    assert.ok(!Number.isNaN(Date.parse(created.createdAt)));
    assert.ok(Date.parse(created.expiresAt) > Date.parse(created.createdAt));
    assert.equal(created.timeoutConfig.autoRenew, true);
  });

  test("createSession refuses what elizaOS refuses", async () => {
    await rejectsWith(sessions.createSession({ agentId: randomUUID() }), "MISSING_FIELDS", 400);
    await rejectsWith(
      sessions.createSession({ agentId: "not-a-uuid", userId: randomUUID() }),
      "INVALID_UUID",
      400,
    );
  });

  test("getSession answers SessionInfo with its channelId", async () => {
    const { params, id } = await newSession();
    const info = await sessions.getSession(id);
    assert.equal(info.sessionId, id);
    assert.equal(info.channelId, id);
    assert.equal(info.agentId, params.agentId);
    assert.equal(info.userId, params.userId);
    assert.deepEqual(info.metadata, params.metadata);
    assert.ok(!Number.isNaN(Date.parse(info.lastActivity)));
    assert.equal(info.renewalCount, 0);
    assert.ok(info.timeRemaining > 0);
    assert.equal(info.isNearExpiration, false);
    assert.equal(info.messageCount, 0);
  });

  test("getSession errors are ApiErrors with the contract's codes", async () => {
    await rejectsWith(sessions.getSession(randomUUID()), "SESSION_NOT_FOUND", 404);
    await rejectsWith(sessions.getSession("not-a-uuid"), "INVALID_UUID", 400);
    const { id } = await newSession({}, { timeoutConfig: { timeoutMinutes: 0 } });
    await rejectsWith(sessions.getSession(id), "SESSION_EXPIRED", 410);
  });

  test("sendMessage stores the message and shows the session's context in its metadata", async () => {
    const { params, id } = await newSession({ platform: "discord", lang: "fr" });
    const sent = await sessions.sendMessage(id, {
      content: "Hello!",
      metadata: { lang: "en", source: "test" },
      attachments: [{ type: "image", url: "https://example.com/a.png", name: "a.png" }],
    });
    assert.match(sent.id, /^[0-9a-f-]{36}$/);
    assert.equal(sent.content, "Hello!");
    assert.equal(sent.authorId, params.userId);
    assert.equal(sent.isAgent, false);
    assert.deepEqual(sent.metadata, {
      platform: "discord",
      lang: "en",
      sessionId: id,
      agentId: params.agentId,
      userId: params.userId,
      source: "test",
    });
    assert.deepEqual(sent.attachments, [
      { type: "image", url: "https://example.com/a.png", name: "a.png" },
    ]);
    assert.equal(typeof sent.sessionStatus.wasRenewed, "boolean");
    assert.ok(!Number.isNaN(Date.parse(sent.sessionStatus.expiresAt)));
    assert.equal(sent.agentResponse, undefined);
  });

  test("sendMessage with the websocket transport answers at once", async () => {
    const { id } = await newSession();
    const sent = await sessions.sendMessage(id, { content: "hi", transport: "websocket" });
    assert.equal(sent.content, "hi");
    assert.equal(sent.agentResponse, undefined);
  });

  test("sendMessage errors are ApiErrors with the contract's codes", async () => {
    const { id } = await newSession();
    await rejectsWith(
      sessions.sendMessage(id, { content: "x".repeat(4001) }),
      "INVALID_CONTENT",
      400,
    );
    await rejectsWith(
      sessions.sendMessage(id, { content: "hi", transport: "carrier-pigeon" }),
      "INVALID_TRANSPORT",
      400,
    );
    await rejectsWith(sessions.sendMessage(randomUUID(), { content: "hi" }), "SESSION_NOT_FOUND", 404);
  });

  test("sendMessageSync answers with the agent's reply as agentResponse.text", async () => {
    const { params, id } = await newSession({ platform: "web" });
    const stop = new AbortController();
    await followAgent(params.agentId, stop.signal, async (name, data) => {
      if (name !== "message" || data.isAgent || data.sessionId !== id) return;
      assert.equal(data.metadata.sessionId, id);
      assert.equal(data.metadata.platform, "web");
      const reply = await fetch(`${baseUrl}/api/messaging/sessions/${id}/messages`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-API-Key": apiKey },
        body: JSON.stringify({
          content: `echo: ${data.content}`,
          authorId: params.agentId,
          parentId: data.id,
          metadata: { thought: "repeat it", actions: ["REPLY"] },
        }),
      });
      assert.equal(reply.status, 201);
    });
    try {
      const answered = await sessions.sendMessageSync(id, { content: "ping" });
      assert.equal(answered.content, "ping");
      const response = answered.agentResponse;
      assert.equal(response.text, "echo: ping");
      assert.equal(response.thought, "repeat it");
      assert.deepEqual(response.actions, ["REPLY"]);
      assert.equal(response.content, "echo: ping");
      assert.equal(response.authorId, params.agentId);
      assert.equal(response.isAgent, true);
      assert.equal(response.parentId, answered.id);
      assert.equal(response.metadata.sessionId, id);
    } finally {
      stop.abort();
    }
  });

  test("sendMessageSync with no agent answers agentResponse null before the client gives up", async () => {
    const { id } = await newSession();
    const started = Date.now();
    const answered = await sessions.sendMessageSync(id, { content: "anyone there?" });
    assert.equal(answered.agentResponse, null);
    assert.ok(Date.now() - started < CLIENT_TIMEOUT_MS);
  });

  test("getMessages pages newest first with hasMore and the session context", async () => {
    const { params, id } = await newSession({ platform: "web" });
    const sent = [];
    for (let i = 0; i < 5; i++) {
      sent.push(await sessions.sendMessage(id, { content: `m${i}` }));
    }
    const all = await sessions.getMessages(id);
    assert.deepEqual(
      all.messages.map((m) => m.content),
      ["m4", "m3", "m2", "m1", "m0"],
    );
    assert.equal(all.hasMore, false);
    for (const message of all.messages) {
      assert.equal(message.authorId, params.userId);
      assert.equal(message.isAgent, false);
      assert.equal(message.metadata.sessionId, id);
      assert.equal(message.metadata.platform, "web");
    }
    const newest = await sessions.getMessages(id, { limit: 2 });
    assert.deepEqual(newest.messages.map((m) => m.content), ["m4", "m3"]);
    assert.equal(newest.hasMore, true);
    const oldest = newest.messages[newest.messages.length - 1];
    const older = await sessions.getMessages(id, { limit: 2, before: new Date(oldest.createdAt) });
    for (const message of older.messages) {
      assert.ok(Date.parse(message.createdAt) < Date.parse(oldest.createdAt));
    }
    const after = await sessions.getMessages(id, { after: Date.parse(sent[0].createdAt) - 1 });
    assert.ok(after.messages.some((m) => m.id === sent[0].id));
    const none = await sessions.getMessages(id, { after: new Date(Date.now() + 60_000).toISOString() });
    assert.deepEqual(none.messages, []);
    assert.equal(none.hasMore, false);
  });

  test("getMessages errors are ApiErrors with the contract's codes", async () => {
    await rejectsWith(sessions.getMessages(randomUUID()), "SESSION_NOT_FOUND", 404);
    await rejectsWith(sessions.getMessages("nope"), "INVALID_UUID", 400);
  });

  test("deleteSession removes the session", async () => {
    const { id } = await newSession();
    await sessions.sendMessage(id, { content: "bye" });
    await sessions.deleteSession(id);
    await rejectsWith(sessions.getSession(id), "SESSION_NOT_FOUND", 404);
    await rejectsWith(sessions.deleteSession(id), "SESSION_NOT_FOUND", 404);
  });
});

describe("listing", () => {
  test("listSessions, which takes no parameters, sees every session when there are more than 100", async () => {
    const created = [];
    for (let batch = 0; batch < 6; batch++) {
      const made = await Promise.all(Array.from({ length: 25 }, () => newSession()));
      created.push(...made.map((s) => s.id));
    }
    const listing = await sessions.listSessions();
    assert.ok(listing.total >= created.length, `total ${listing.total}`);
    assert.equal(listing.sessions.length, listing.total);
    const listed = new Set(listing.sessions.map((s) => s.sessionId));
    for (const id of created) assert.ok(listed.has(id), `session ${id} is listed`);
    for (const info of listing.sessions) assert.equal(info.channelId, info.sessionId);
    assert.equal(typeof listing.stats.activeSessions, "number");
  });
});
