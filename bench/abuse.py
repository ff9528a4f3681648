#!/usr/bin/env python3
"""The floods of bench/abuse.sh and the Markdown report of their results (Python 3.11,
standard library only).

  abuse.py run SCENARIO --addr HOST:PORT --pid PID --bin SESSIOND --out RESULT.json
               [--reply-timeout SECONDS]
  abuse.py report RESULT.json…     (prints the Markdown; exits 1 if a defence failed)

Each scenario runs against its own fresh server: a baseline of probes with no flood, then
the same probes during the flood. The probes, 50 of each kind spread over the window:
  - health on a new connection: what a new client (or a load balancer) sees; it needs one
    of the server's --max-connections slots;
  - health on a connection opened before the flood and kept alive: the server's own
    responsiveness, whatever the slots;
  - an append (POST message) on a kept-alive connection: the durable write path.
A probe with no answer within 5 s counts as a failure. Each flood runs in a process of its
own, so that its bookkeeping never delays the probes (one GIL per process).
"""

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import re
import select
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone

API = "/api/messaging"
AGENT = "67e55044-10b1-426f-9247-bb680e5fe0c8"
USER = "0b8e6ad8-5e9a-4b0c-9f0e-3d2f1c7a8b90"
PROBES = 50
PROBE_TIMEOUT = 5.0
BASELINE_WINDOW = 5.0
KINDS = ("health_new", "health_kept", "append")
KIND_NAMES = {
    "health_new": "health on a new connection",
    "health_kept": "health on a kept-alive connection",
    "append": "append on a kept-alive connection",
}


# --------------------------------------------------------------------------------------
# HTTP/1.1 over plain sockets


def request_bytes(method, path, body=None, close=False, headers=()):
    lines = [f"{method} {path} HTTP/1.1", "Host: sessiond-bench", *headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class Dechunker:
    """Incremental decoder of a chunked transfer encoding."""

    def __init__(self):
        self.buf = b""
        self.need = None
        self.done = False

    def feed(self, data):
        self.buf += data
        out = []
        while not self.done:
            if self.need is None:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.buf[:end].split(b";")[0], 16)
                self.buf = self.buf[end + 2 :]
                if size == 0:
                    self.done = True
                    break
                self.need = size
            elif len(self.buf) >= self.need + 2:
                out.append(self.buf[: self.need])
                self.buf = self.buf[self.need + 2 :]
                self.need = None
            else:
                break
        return b"".join(out)


def parse_head(buf):
    """(status, headers, rest) once `buf` holds a whole response head, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, buf[end + 4 :]


def complete_response(buf):
    """(status, body) once `buf` holds a whole response with a Content-Length, else None."""
    parsed = parse_head(buf)
    if parsed is None:
        return None
    status, headers, rest = parsed
    length = int(headers.get("content-length", -1))
    if length < 0 or len(rest) < length:
        return None
    return status, rest[:length]


def recv_some(sock, deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
    return sock.recv(65536)


class ClosedUnanswered(ConnectionError):
    """The connection closed before a byte of the answer came."""


def read_response(sock, deadline):
    """Reads one response from a blocking socket: (status, body)."""
    buf = b""
    while (parsed := parse_head(buf)) is None:
        try:
            data = recv_some(sock, deadline)
        except ConnectionResetError as error:
            raise (ClosedUnanswered(str(error)) if not buf else error) from None
        if not data:
            raise ClosedUnanswered("closed before an answer") if not buf else ConnectionError("closed inside a head")
        buf += data
    status, headers, rest = parsed
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            data = recv_some(sock, deadline)
            if not data:
                raise ConnectionError("closed inside a body")
            rest += data
        return status, rest[:length]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = Dechunker()
        body = chunks.feed(rest)
        while not chunks.done:
            data = recv_some(sock, deadline)
            if not data:
                raise ConnectionError("closed inside a body")
            body += chunks.feed(data)
        return status, body
    while data := recv_some(sock, deadline):
        rest += data
    return status, rest


def call(addr, method, path, payload=None, timeout=10.0):
    """One request on a new connection: (status, parsed JSON body)."""
    body = None if payload is None else json.dumps(payload).encode()
    with socket.create_connection(addr, timeout=timeout) as sock:
        sock.sendall(request_bytes(method, path, body, close=True))
        status, body = read_response(sock, time.monotonic() + timeout)
    return status, json.loads(body) if body else None


def envelope_code(body):
    """The error code of a JSON error envelope, or None when `body` is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("success") is False and isinstance(doc.get("error"), dict):
        return doc["error"].get("code")
    return None


def new_session(addr):
    status, doc = call(addr, "POST", f"{API}/sessions", {"agentId": AGENT, "userId": USER})
    if status != 201:
        raise SystemExit(f"creating a session answered {status}: {doc}")
    return doc["sessionId"]


# --------------------------------------------------------------------------------------
# Probes and server sampling (in the parent process)


class Kept:
    """A connection kept alive across probes, opened before the flood.

    A server may close a connection idle between requests (sessiond does, at its
    connection cap, to the one that has waited longest). As HTTP clients do, the probe
    then reconnects: before sending when it sees the close, or once after sending when
    the connection closes before a byte of the answer came. Such closes are counted."""

    def __init__(self, addr):
        self.addr = addr
        self.sock = None
        self.closed_by_server = 0

    def stale(self):
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except OSError:
            return True

    def call(self, raw, deadline):
        if self.sock is not None and self.stale():
            self.closed_by_server += 1
            self.close()
        for attempt in (1, 2):
            reused = self.sock is not None
            if self.sock is None:
                self.sock = socket.create_connection(self.addr, timeout=max(0.001, deadline - time.monotonic()))
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.sock.sendall(raw)
                return read_response(self.sock, deadline)
            except (ClosedUnanswered, BrokenPipeError) as error:
                self.close()
                if not (reused and attempt == 1):
                    raise ClosedUnanswered(str(error)) from None
                self.closed_by_server += 1
            except BaseException:
                self.close()
                raise

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def timed(request, expect):
    """Runs `request(deadline)`: [ms, status] when it answered `expect` in time, else
    [None, what went wrong]."""
    start = time.monotonic()
    try:
        status, _ = request(start + PROBE_TIMEOUT)
    except TimeoutError:
        return [None, f"no answer within {PROBE_TIMEOUT:.0f} s"]
    except OSError as error:
        return [None, f"{type(error).__name__}: {error}"]
    if status != expect:
        return [None, f"status {status}"]
    return [(time.monotonic() - start) * 1000, status]


class Prober:
    def __init__(self, addr, session):
        self.addr = addr
        self.session = session
        self.health = Kept(addr)
        self.append = Kept(addr)
        self.health_close = request_bytes("GET", f"{API}/sessions/health", close=True)
        # Opened (and warmed) now, before any flood takes the connection slots.
        self.run(2, 0.1)

    def run(self, count, window):
        """`count` probes of each kind, one every window/count seconds."""
        results = {kind: [None] * count for kind in KINDS}
        start = time.monotonic() + 0.02
        interval = window / count

        def wait_turn(i):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)

        def new_connection(i):
            def request(deadline):
                with socket.create_connection(self.addr, timeout=PROBE_TIMEOUT) as sock:
                    sock.sendall(self.health_close)
                    return read_response(sock, deadline)

            results["health_new"][i] = timed(request, 200)

        def schedule_new():
            # A thread per probe: one stuck in the accept queue must not delay the next.
            threads = []
            for i in range(count):
                wait_turn(i)
                threads.append(threading.Thread(target=new_connection, args=(i,)))
                threads[-1].start()
            for thread in threads:
                thread.join()

        def kept(kind, client, raw, expect):
            for i in range(count):
                wait_turn(i)
                results[kind][i] = timed(lambda deadline, i=i: client.call(raw(i), deadline), expect)

        path = f"{API}/sessions/{self.session}/messages"
        threads = [
            threading.Thread(target=schedule_new),
            threading.Thread(
                target=kept,
                args=("health_kept", self.health, lambda i: request_bytes("GET", f"{API}/sessions/health"), 200),
            ),
            threading.Thread(
                target=kept,
                args=(
                    "append",
                    self.append,
                    lambda i: request_bytes("POST", path, json.dumps({"content": f"probe {i}"}).encode()),
                    201,
                ),
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def close(self):
        self.health.close()
        self.append.close()


def accept_queue(port):
    """Connections waiting in the server's accept queue (the rx_queue of its listening
    socket in /proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    return 0


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler(threading.Thread):
    """Samples the server every 50 ms: its accept queue and its open fds."""

    def __init__(self, pid, port):
        super().__init__(daemon=True)
        self.pid, self.port = pid, port
        self.stopping = threading.Event()
        self.max_queue = 0
        self.max_fds = 0

    def run(self):
        while not self.stopping.is_set():
            try:
                self.max_queue = max(self.max_queue, accept_queue(self.port))
                self.max_fds = max(self.max_fds, open_fds(self.pid))
            except OSError:
                return  # the server is gone; the scenario notices
            time.sleep(0.05)

    def stop(self):
        self.stopping.set()
        self.join()


# --------------------------------------------------------------------------------------
# Floods (each in a child process: it reports "ready", then its result, through a pipe)


def connect_all(addr, n, first=b""):
    """n connections, each sent `first`: non-blocking sockets and when each connected.

    Paced by the server's accept queue: its listen backlog is 128 (mio's, as std's), and a
    burst past it has its SYNs dropped and retried a second later, which would spread the
    flood over seconds. Once the server holds all the connections it takes, the queue
    stops draining and the wait gives up."""
    socks = []
    for i in range(n):
        if i % 32 == 0:
            wait_until = time.monotonic() + 0.3
            while accept_queue(addr[1]) > 32 and time.monotonic() < wait_until:
                time.sleep(0.002)
        sock = socket.create_connection(addr, timeout=10)
        if first:
            sock.sendall(first)
        sock.setblocking(False)
        socks.append((sock, time.monotonic()))
    return socks


def describe_answer(data):
    """The status line of what the server sent, with its envelope's code when it has one."""
    text = data.split(b"\r\n", 1)[0].decode("latin-1")[:40]
    answer = complete_response(data)
    code = envelope_code(answer[1]) if answer else None
    return f"{text} ({code})" if code else text


def flood_silent(pipe, addr, n, give_up):
    """n connections that never send a byte; when does the server close each?"""
    sel = selectors.DefaultSelector()
    begun = time.monotonic()
    for i, (sock, opened) in enumerate(connect_all(addr, n)):
        sel.register(sock, selectors.EVENT_READ, (i, opened))
    pipe.send({"open_s": time.monotonic() - begun})
    closed, answers, answered = [], Counter(), set()
    while len(closed) < n and time.monotonic() < begun + give_up:
        for key, _ in sel.select(timeout=0.2):
            i, opened = key.data
            if note_answer(key.fileobj, i, answered, answers):
                continue
            closed.append(time.monotonic() - opened)
            sel.unregister(key.fileobj)
            key.fileobj.close()
    pipe.send({"closed_after": sorted(closed), "still_open": n - len(closed), "answers": dict(answers)})


def note_answer(sock, i, answered, answers):
    """Reads what a flood socket got; counts the first answer on each. False once closed."""
    try:
        data = sock.recv(65536)
    except OSError:
        data = b""
    if data and i not in answered:
        answered.add(i)
        answers[describe_answer(data)] += 1
    return bool(data)


def flood_slow_body(pipe, addr, n, path, length, drip_every, give_up):
    """n POSTs that announce `length` body bytes and send one every `drip_every` s."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: sessiond-bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()
    begun = time.monotonic()
    socks = {}
    for i, (sock, opened) in enumerate(connect_all(addr, n, head + b"{")):
        socks[i] = sock
        sel.register(sock, selectors.EVENT_READ, (i, opened))
    pipe.send({"open_s": time.monotonic() - begun})
    cut, answers, answered, drips = [], Counter(), set(), 0

    def close(sock, i, opened):
        cut.append(time.monotonic() - opened)
        sel.unregister(sock)
        sock.close()
        del socks[i]

    next_drip = begun + drip_every
    while socks and time.monotonic() < begun + give_up:
        now = time.monotonic()
        for key, _ in sel.select(timeout=max(0.0, min(next_drip, begun + give_up) - now)):
            i, opened = key.data
            if note_answer(key.fileobj, i, answered, answers):
                continue
            close(key.fileobj, i, opened)
        if time.monotonic() >= next_drip:
            drips += 1
            for i, sock in list(socks.items()):
                try:
                    sock.send(b" ")
                except BlockingIOError:
                    pass
                except OSError:
                    close(sock, i, sel.get_key(sock).data[1])
            next_drip += drip_every
    pipe.send({"cut_after": sorted(cut), "still_open": len(socks), "answers": dict(answers), "drips": drips})


class StreamConn:
    """One event-stream request and what came back on it."""

    def __init__(self):
        self.buf = b""
        self.status = None
        self.chunks = None
        self.events = b""
        self.messages = 0
        self.closed = False


def flood_streams(pipe, addr, n, path):
    """n event streams; counts the accepted, checks each refusal, and counts the `message`
    events each accepted stream receives until told to stop."""
    raw = request_bytes("GET", path, headers=("Accept: text/event-stream",))
    sel = selectors.DefaultSelector()
    conns = []
    begun = time.monotonic()
    for sock, _ in connect_all(addr, n, raw):
        conn = StreamConn()
        conns.append(conn)
        sel.register(sock, selectors.EVENT_READ, conn)

    def on_data(sock, conn, data):
        if not data:
            conn.closed = True
            sel.unregister(sock)
            sock.close()
            return
        if conn.status is None:
            conn.buf += data
            parsed = parse_head(conn.buf)
            if parsed is None:
                return
            conn.status, headers, data = parsed
            conn.buf = b""
            if conn.status == 200:
                conn.chunks = Dechunker()
        if conn.status == 200:
            conn.events += conn.chunks.feed(data)
            *whole, conn.events = conn.events.split(b"\n\n")
            conn.messages += sum(1 for event in whole if b"\nevent: message\n" in b"\n" + event + b"\n")
        else:
            conn.buf += data

    def pump(until, stop_when):
        while time.monotonic() < until and not stop_when():
            for key, _ in sel.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                on_data(key.fileobj, key.data, data)

    # Ready once every request has its answer's head (refusals: also their close).
    pump(begun + 20, lambda: all(c.status is not None and (c.status == 200 or c.closed) for c in conns))
    pipe.send({"open_s": time.monotonic() - begun, "accepted": sum(c.status == 200 for c in conns)})
    pump(time.monotonic() + 120, pipe.poll)
    # Told to stop with the number of appends stored meanwhile: the last one's event may
    # still be on its way to some of the streams, so read on for a while until they have it.
    appended = pipe.recv()
    accepted = [c for c in conns if c.status == 200]
    pump(time.monotonic() + 3, lambda: all(c.messages >= appended or c.closed for c in accepted))
    refusals = [c for c in conns if c.status not in (None, 200)]
    bodies = Counter()
    for conn in refusals:
        # conn.buf is the whole body: the server closes the connection after a refusal.
        code = envelope_code(conn.buf)
        bodies[f"{conn.status} {code or 'not an envelope: ' + conn.buf[:80].decode('latin-1')}"] += 1
    pipe.send(
        {
            "accepted": len(accepted),
            "accepted_ended_early": sum(c.closed for c in accepted),
            "refusals": dict(bodies),
            "refused_not_closed": sum(not c.closed for c in refusals),
            "no_answer": sum(c.status is None for c in conns),
            "appended": appended,
            "messages_min": min((c.messages for c in accepted), default=0),
            "messages_max": max((c.messages for c in accepted), default=0),
        }
    )


def classify(status, body):
    """What a held request's answer was: 'created' (201 with agentResponse null), 'busy'
    (503 SERVER_BUSY envelope) or a short description of anything else."""
    code = envelope_code(body)
    if code is not None:
        return "busy" if (status in (503, None) and code == "SERVER_BUSY") else f"{status or ''} {code}".strip()
    try:
        doc = json.loads(body)
    except ValueError:
        return f"{status} not JSON"
    if status in (201, None) and isinstance(doc, dict) and "id" in doc and doc.get("agentResponse", "absent") is None:
        return "created"
    return f"{status} {str(doc)[:60]}"


def flood_held_h1(pipe, addr, n, path, body, give_up):
    """n held requests (transport http, a large body each), one connection each."""
    raw = request_bytes("POST", path, body)
    sel = selectors.DefaultSelector()
    begun = time.monotonic()
    state = {}
    for sock, _ in connect_all(addr, n):
        state[sock] = [memoryview(raw), b""]
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    pipe.send({"open_s": time.monotonic() - begun})
    outcomes, last_answer = Counter(), 0.0

    def finish(sock, outcome):
        nonlocal last_answer
        outcomes[outcome] += 1
        last_answer = time.monotonic() - begun
        sel.unregister(sock)
        sock.close()
        del state[sock]

    while state and time.monotonic() < begun + give_up:
        for key, events in sel.select(timeout=0.2):
            sock = key.fileobj
            out, got = state[sock]
            if events & selectors.EVENT_WRITE and out:
                try:
                    sent = sock.send(out[:262144])
                    state[sock][0] = out = out[sent:]
                    if not out:
                        sel.modify(sock, selectors.EVENT_READ)
                except BlockingIOError:
                    pass
                except OSError:
                    # Refused before its body was read (503 then close): the answer may
                    # still be waiting to be read.
                    state[sock][0] = out = b""
                    sel.modify(sock, selectors.EVENT_READ)
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                got = state[sock][1] = got + data
                answer = complete_response(got)
                if answer is not None:
                    finish(sock, classify(*answer))
                elif not data:
                    finish(sock, "closed without an answer")
    outcomes["no answer in time"] += len(state)
    pipe.send({"outcomes": dict(outcomes), "last_answer_s": last_answer})


# A minimal HTTP/2 client over cleartext (prior knowledge). The curl of Debian 12 (7.88.1)
# cannot multiplex h2c: every reused connection fails with "Error in the HTTP2 framing
# layer" (curl issue 10634, fixed in 8.0). Requests are encoded with HPACK literals (no
# Huffman, no dynamic table); responses are told apart by their JSON bodies, so their
# header blocks are skipped, never decoded.

H2_DATA, H2_HEADERS, H2_RST, H2_SETTINGS, H2_PING, H2_GOAWAY, H2_WINDOW = 0, 1, 3, 4, 6, 7, 8
H2_END_STREAM, H2_ACK, H2_END_HEADERS, H2_PADDED = 0x1, 0x1, 0x4, 0x8
H2_MAX_WINDOW = 2**31 - 1


def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes(out + [value])


def hpack_literal(name, value):
    """A literal header field without indexing, with a new name (RFC 7541, 6.2.2)."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


class H2Connection:
    """One h2c connection that sends `count` POSTs, as many at once as the server's
    SETTINGS_MAX_CONCURRENT_STREAMS allows (as a well-behaved client does)."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.changed = asyncio.Condition()
        self.peer_max_streams = None
        self.settings = asyncio.Event()
        self.conn_window = 65535
        self.stream_initial = 65535
        self.windows = {}
        self.max_frame = 16384
        self.active = {}
        self.max_active = 0
        self.dead = None
        self.outcomes = Counter()
        self.last_answer = 0.0

    async def notify(self):
        async with self.changed:
            self.changed.notify_all()

    def finish(self, stream, outcome):
        if self.active.pop(stream, None) is not None:
            self.windows.pop(stream, None)
            self.outcomes[outcome] += 1
            self.last_answer = time.monotonic()

    async def read_loop(self, reader):
        try:
            while True:
                head = await reader.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
                payload = await reader.readexactly(length)
                if kind == H2_SETTINGS and not flags & H2_ACK:
                    for at in range(0, len(payload), 6):
                        ident, value = struct.unpack(">HI", payload[at : at + 6])
                        if ident == 3:
                            self.peer_max_streams = value
                        elif ident == 4:
                            for open_stream in self.windows:
                                self.windows[open_stream] += value - self.stream_initial
                            self.stream_initial = value
                        elif ident == 5:
                            self.max_frame = value
                    self.writer.write(h2_frame(H2_SETTINGS, H2_ACK, 0))
                    if self.peer_max_streams is None:
                        self.peer_max_streams = 1 << 20
                    self.settings.set()
                elif kind == H2_WINDOW:
                    increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                    if stream == 0:
                        self.conn_window += increment
                    elif stream in self.windows:
                        self.windows[stream] += increment
                elif kind == H2_PING and not flags & H2_ACK:
                    self.writer.write(h2_frame(H2_PING, H2_ACK, 0, payload))
                elif kind == H2_DATA and stream in self.active:
                    if flags & H2_PADDED:
                        payload = payload[1 : len(payload) - payload[0]]
                    self.active[stream] += payload
                    if flags & H2_END_STREAM:
                        self.finish(stream, classify(None, bytes(self.active[stream])))
                elif kind == H2_HEADERS and stream in self.active and flags & H2_END_STREAM:
                    self.finish(stream, classify(None, bytes(self.active[stream])))
                elif kind == H2_RST:
                    self.finish(stream, f"stream reset (error {struct.unpack('>I', payload)[0]})")
                elif kind == H2_GOAWAY:
                    last, code = struct.unpack(">II", payload[:8])
                    for open_stream in [s for s in self.active if s > (last & 0x7FFFFFFF)]:
                        self.finish(open_stream, f"GOAWAY (error {code})")
                await self.notify()
        except (asyncio.IncompleteReadError, OSError) as error:
            self.dead = type(error).__name__
            for open_stream in list(self.active):
                self.finish(open_stream, "connection closed")
            self.settings.set()
            await self.notify()

    async def send_stream(self, stream, block, body):
        self.writer.write(h2_frame(H2_HEADERS, H2_END_HEADERS, stream, block))
        sent = 0
        while sent < len(body) and stream in self.active:
            async with self.changed:
                await self.changed.wait_for(
                    lambda: self.dead or stream not in self.active or (self.conn_window > 0 and self.windows[stream] > 0)
                )
            if self.dead or stream not in self.active:
                return
            size = min(self.max_frame, self.conn_window, self.windows[stream], len(body) - sent)
            self.conn_window -= size
            self.windows[stream] -= size
            last = sent + size == len(body)
            self.writer.write(h2_frame(H2_DATA, H2_END_STREAM if last else 0, stream, body[sent : sent + size]))
            sent += size
            await self.writer.drain()

    async def run(self, path, body, count):
        reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            # No server push; our windows as large as allowed: answers never wait on us.
            + h2_frame(H2_SETTINGS, 0, 0, struct.pack(">HIHI", 2, 0, 4, H2_MAX_WINDOW))
            + h2_frame(H2_WINDOW, 0, 0, struct.pack(">I", H2_MAX_WINDOW - 65535))
        )
        reading = asyncio.create_task(self.read_loop(reader))
        await asyncio.wait_for(self.settings.wait(), 10)
        block = b"".join(
            hpack_literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"{self.host}:{self.port}"),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            )
        )
        senders = []
        for k in range(count):
            async with self.changed:
                await self.changed.wait_for(lambda: self.dead or len(self.active) < self.peer_max_streams)
            if self.dead:
                self.outcomes["not sent: connection closed"] += count - k
                break
            stream = 2 * k + 1
            self.active[stream] = bytearray()
            self.windows[stream] = self.stream_initial
            self.max_active = max(self.max_active, len(self.active))
            senders.append(asyncio.create_task(self.send_stream(stream, block, body)))
        async with self.changed:
            await self.changed.wait_for(lambda: self.dead or not self.active)
        await asyncio.gather(*senders)
        reading.cancel()
        self.writer.close()


def flood_held_h2(pipe, addr, n, connections, path, body, give_up):
    """n held requests over `connections` h2c connections (n / connections streams each)."""

    async def main():
        clients = [H2Connection(*addr) for _ in range(connections)]
        per = [n // connections + (i < n % connections) for i in range(connections)]
        begun = time.monotonic()
        pipe.send({})
        runs = [asyncio.create_task(c.run(path, body, k)) for c, k in zip(clients, per)]
        done, pending = await asyncio.wait(runs, timeout=give_up)
        for task in pending:
            task.cancel()
        outcomes = Counter()
        for client in clients:
            outcomes.update(client.outcomes)
            outcomes["no answer in time"] += len(client.active)
        for task in done:
            if task.exception() is not None:
                outcomes[f"client error: {task.exception()!r}"[:80]] += 1
        return {
            "outcomes": dict(outcomes),
            "last_answer_s": max((c.last_answer for c in clients), default=begun) - begun,
            "server_max_streams": clients[0].peer_max_streams,
            "max_in_flight_per_connection": max(c.max_active for c in clients),
        }

    pipe.send(asyncio.run(main()))


# --------------------------------------------------------------------------------------
# Scenarios (in the parent process)


def serve_defaults(binary):
    """The defaults `sessiond serve --help` shows, by flag."""
    text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    defaults = {}
    for block in re.split(r"\n(?=\s+-)", text):
        flag = re.match(r"\s+(?:-\w, )?--([\w-]+)", block)
        value = re.search(r"\[default: (\d+)\]", block)
        if flag and value:
            defaults[flag.group(1)] = int(value.group(1))
    return defaults


class Context:
    def __init__(self, args):
        host, port = args.addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.pid = args.pid
        self.limits = serve_defaults(args.bin)
        self.reply_timeout = args.reply_timeout or self.limits["reply-timeout-seconds"]
        self.failures = []
        self.notes = []

    def fail(self, text):
        self.failures.append(text)

    def alive(self):
        try:
            os.kill(self.pid, 0)
            with open(f"/proc/{self.pid}/status") as status:
                return "zombie" not in status.read()
        except OSError:
            return False


def start_flood(target, *args):
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    return process, parent


def receive(pipe, timeout, what):
    if not pipe.poll(timeout):
        raise SystemExit(f"the flood did not report {what} within {timeout} s")
    return pipe.recv()


def check_probes(ctx, phase, results):
    for kind in KINDS:
        bad = [(i, r[1]) for i, r in enumerate(results[kind]) if r[0] is None]
        if bad:
            reasons = Counter(reason for _, reason in bad)
            ctx.fail(
                f"{phase}: {KIND_NAMES[kind]}: {len(bad)} of {len(results[kind])} probes failed "
                f"({'; '.join(f'{n}× {r}' for r, n in reasons.items())})"
            )


def run_scenario(ctx, name, flood, window, stop_flood=False, result_timeout=120):
    """Baseline probes, then the flood (`flood(session)`: its target and arguments) with
    probes over `window` seconds. Returns the flood's result, with the server's samples
    added, and the probes' results."""
    session = new_session(ctx.addr)
    prober = Prober(ctx.addr, session)
    baseline = prober.run(PROBES, BASELINE_WINDOW)
    check_probes(ctx, "baseline (no flood)", baseline)
    closed_before = prober.health.closed_by_server + prober.append.closed_by_server
    fds_idle = open_fds(ctx.pid)
    rss_before = status_kb(ctx.pid, "VmRSS")
    target, *args = flood(session)
    process, pipe = start_flood(target, ctx.addr, *args)
    # Started after the fork: the flood's process inherits no running thread.
    sampler = Sampler(ctx.pid, ctx.addr[1])
    sampler.start()
    ready = receive(pipe, 60, "that it is ready")
    during = prober.run(PROBES, window)
    if stop_flood:
        pipe.send(sum(ms is not None for ms, _ in during["append"]))
    result = receive(pipe, result_timeout, "its result")
    process.join(10)
    sampler.stop()
    prober.close()
    check_probes(ctx, f"during {name}", during)
    if not ctx.alive():
        ctx.fail(f"{name}: the server died")
    else:
        # Once the flood is gone, a new client must be served at once again.
        after = timed(lambda deadline: call(ctx.addr, "GET", f"{API}/sessions/health", timeout=PROBE_TIMEOUT), 200)
        if after[0] is None:
            ctx.fail(f"after {name}: health on a new connection: {after[1]}")
    result.update(
        ready=ready,
        max_accept_queue=sampler.max_queue,
        # The two kept-alive probe connections were open when fds_idle was counted.
        max_connections_held=sampler.max_fds - fds_idle + 2,
        kept_closed=prober.health.closed_by_server + prober.append.closed_by_server - closed_before,
        rss_before_kb=rss_before,
    )
    return result, {"baseline": baseline, "flood": during, "window": window}


def seconds(values, q):
    return values[max(0, math.ceil(q * len(values)) - 1)]


def closings(verb, times, n, timeout):
    """How the server closed a flood's connections (`times`: seconds after each connected):
    at its timeout, earlier (to make room at the connection cap), or later (after waiting
    for a slot)."""
    early = [t for t in times if t < timeout - 1]
    on_time = [t for t in times if timeout - 1 <= t <= timeout + 2]
    late = [t for t in times if t > timeout + 2]
    text = (
        f"{verb} {len(on_time)} of {n} at the timeout, after {seconds(on_time, 0.5):.1f} s (p50), {max(on_time):.1f} s (max)"
        if on_time
        else f"{verb} none of {n} at the timeout"
    )
    if early:
        text += f"; {len(early)} earlier, at {min(early):.1f}–{max(early):.1f} s (to make room for new connections)"
    if late:
        text += f"; {len(late)} later, at {min(late):.1f}–{max(late):.1f} s (after waiting for a slot)"
    return text


def scenario_silent(ctx):
    n = 1024
    timeout = ctx.limits["header-read-timeout-seconds"]
    # A socket that waited in the accept queue for a slot is closed a timeout later.
    result, probes = run_scenario(
        ctx, f"{n} silent sockets", lambda session: (flood_silent, n, 2 * timeout + 6), window=timeout - 1
    )
    outcome = closings("closed", result["closed_after"], n, timeout)
    if result["answers"]:
        outcome += "; sent before closing: " + ", ".join(f"{k!r} ×{v}" for k, v in result["answers"].items())
    else:
        outcome += "; never a byte sent"
    if result["still_open"]:
        ctx.fail(f"{n} silent sockets: {result['still_open']} still open after {2 * timeout + 6} s")
        outcome += f"; {result['still_open']} still open after {2 * timeout + 6} s"
    return f"{n:,} silent sockets (header timeout {timeout} s)", probes, result, outcome


def scenario_slow_body(ctx):
    n, length, drip = 1100, 60000, 5
    timeout = ctx.limits["request-read-timeout-seconds"]
    give_up = timeout + 6
    result, probes = run_scenario(
        ctx,
        f"{n} slow bodies",
        lambda session: (flood_slow_body, n, f"{API}/sessions/{session}/messages", length, drip, give_up),
        window=15,
    )
    cut = result["cut_after"]
    outcome = closings("cut", cut, n, timeout)
    if result["answers"]:
        outcome += "; answered before cutting: " + ", ".join(f"{k!r} ×{v}" for k, v in result["answers"].items())
    if result["still_open"]:
        outcome += f"; {result['still_open']} still open at {give_up} s (waiting for a slot)"
    # Every connection the server took must be cut at the timeout; the others wait in the
    # accept queue (the cap is --max-connections), which the slot counts allow for.
    expected = min(n, ctx.limits["max-connections"]) - 3
    if len(cut) < expected:
        ctx.fail(f"{n} slow bodies: only {len(cut)} cut within {give_up} s (expected at least {expected})")
    return f"{n:,} slow bodies, 1 byte / {drip} s (request timeout {timeout} s)", probes, result, outcome


def scenario_streams(ctx):
    n = 1024
    limit = ctx.limits["max-streams"]
    result, probes = run_scenario(
        ctx,
        f"{n} event streams",
        lambda session: (flood_streams, n, f"{API}/sessions/{session}/events"),
        window=10,
        stop_flood=True,
    )
    refusals = result["refusals"]
    refused = sum(refusals.values())
    good = refusals.get("503 STREAMS_EXHAUSTED", 0)
    outcome = (
        f"accepted {result['accepted']}, refused {refused}: "
        + ", ".join(f"{v}× {k}" for k, v in refusals.items())
        + f"; connection closed after {refused - result['refused_not_closed']} of the refusals"
        + (
            f"; each accepted stream got all {result['appended']} `message` events of the appends"
            if result["messages_min"] == result["appended"]
            else f"; the accepted streams got {result['messages_min']}–{result['messages_max']}"
            f" of the {result['appended']} `message` events of the appends"
        )
    )
    if good != refused:
        ctx.fail(f"{n} event streams: {refused - good} refusals were not a 503 STREAMS_EXHAUSTED envelope: {refusals}")
    if result["refused_not_closed"]:
        ctx.fail(f"{n} event streams: {result['refused_not_closed']} refused connections were left open")
    if result["accepted"] > limit:
        ctx.fail(f"{n} event streams: {result['accepted']} accepted, over --max-streams {limit}")
    if result["accepted"] + refused != n:
        ctx.fail(f"{n} event streams: {n - result['accepted'] - refused} got no answer")
    if result["accepted_ended_early"]:
        ctx.fail(f"{n} event streams: {result['accepted_ended_early']} accepted streams ended while the flood held them")
    if result["messages_min"] != result["appended"]:
        ctx.notes.append(
            f"{n} event streams: an accepted stream got {result['messages_min']} `message` events,"
            f" not {result['appended']}, within 3 s of the last append"
        )
    return f"{n:,} event streams on one session (--max-streams {limit})", probes, result, outcome


def held_body(size):
    """A held request's body of `size` bytes, nearly all of it an ignored field."""
    doc = {"content": "a held request", "transport": "http", "padding": ""}
    doc["padding"] = "x" * (size - len(json.dumps(doc)))
    body = json.dumps(doc).encode()
    assert len(body) == size
    return body


def scenario_held(ctx, transport):
    n, size, connections = 1000, 60 * 1024, 8
    body = held_body(size)
    if transport == "h1":
        flood = lambda session: (flood_held_h1, n, f"{API}/sessions/{session}/messages", body, 6 * ctx.reply_timeout)
        window = ctx.reply_timeout
    else:
        flood = lambda session: (
            flood_held_h2, n, connections, f"{API}/sessions/{session}/messages", body, 12 * ctx.reply_timeout + 10,
        )
        window = 3 * ctx.reply_timeout
    result, probes = run_scenario(ctx, f"{n} held requests ({transport})", flood, window=window, result_timeout=180)
    hwm = status_kb(ctx.pid, "VmHWM")
    rss_after = status_kb(ctx.pid, "VmRSS")
    outcomes = Counter(result["outcomes"])
    created, busy = outcomes.pop("created", 0), outcomes.pop("busy", 0)
    other = sum(outcomes.values())
    if other:
        ctx.fail(f"{n} held requests ({transport}): {other} answers were neither the message nor SERVER_BUSY: {dict(outcomes)}")
    budget_mb = ctx.limits["max-inflight-body-mb"]
    growth_mb = (hwm - result["rss_before_kb"]) / 1024
    # Plainly unbounded: the peak grew by more than twice everything sent plus the whole
    # in-flight budget. (A held HTTP/1.1 request costs about twice its body at its peak:
    # the connection's read buffer and the parse.)
    if growth_mb > 2 * (n * size / 2**20 + budget_mb):
        ctx.fail(f"{n} held requests ({transport}): peak RSS grew by {growth_mb:.0f} MB")
    if transport == "h1":
        label = f"HTTP/1.1, {n} connections"
    else:
        label = f"h2c, {connections} connections × {n // connections} streams"
        limit = result["server_max_streams"]
        label += f" (server allows {limit} at once each: at most {connections * limit} held at once)"
    memory = {
        "label": label,
        "created": created,
        "busy": busy,
        "other": other if not other else f"{other}: " + ", ".join(f"{v}× {k}" for k, v in outcomes.items()),
        "before_mb": result["rss_before_kb"] / 1024,
        "peak_mb": hwm / 1024,
        "after_mb": rss_after / 1024,
        "last_answer_s": result["last_answer_s"],
        "max_connections_held": result["max_connections_held"],
    }
    title = f"{n:,} held requests of 60 KiB, {'HTTP/1.1' if transport == 'h1' else 'h2c'} (reply timeout {ctx.reply_timeout} s)"
    outcome = (
        f"{created} answered 201 (agentResponse null), {busy} refused 503 SERVER_BUSY"
        + (f", {memory['other']}" if other else "")
        + f"; all answered after {result['last_answer_s']:.1f} s"
    )
    return title, probes, result, outcome, memory


SCENARIOS = {
    "silent": scenario_silent,
    "slow-body": scenario_slow_body,
    "streams": scenario_streams,
    "held-h1": lambda ctx: scenario_held(ctx, "h1"),
    "held-h2c": lambda ctx: scenario_held(ctx, "h2c"),
}


def run(args):
    ctx = Context(args)
    started = time.monotonic()
    title, probes, result, outcome, *memory = SCENARIOS[args.scenario](ctx)
    if result["ready"].get("open_s"):
        outcome = f"opened in {result['ready']['open_s']:.1f} s; " + outcome
    if result["kept_closed"]:
        outcome += (
            f"; closed the probes' idle kept-alive connections {result['kept_closed']} times"
            " (the probes reconnected, as HTTP clients do)"
        )
    result = {
        "scenario": args.scenario,
        "title": title,
        "probes": probes,
        "outcome": outcome,
        "server": {
            "max_accept_queue": result["max_accept_queue"],
            "max_connections_held": result["max_connections_held"],
        },
        "memory": memory[0] if memory else None,
        "failures": ctx.failures,
        "notes": ctx.notes,
        "seconds": time.monotonic() - started,
        "reply_timeout": ctx.reply_timeout,
    }
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)
    print(f"  {title}: {outcome} ({result['seconds']:.0f} s)")
    for line in ctx.notes:
        print(f"  note: {line}")
    for line in ctx.failures:
        print(f"  FAILED: {line}")


# --------------------------------------------------------------------------------------
# The report


def ms(value):
    if value == math.inf:
        return f">{PROBE_TIMEOUT * 1000:.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def ratio(value, base):
    if value == math.inf:
        return f"×>{PROBE_TIMEOUT * 1000 / base:.0f}"
    r = value / base
    return f"×{r:.1f}" if r < 100 else f"×{r:.0f}"


def quantiles(samples):
    """p50 and p99 (nearest rank; of 50 probes, p99 is the slowest); a probe with no
    answer counts as slower than any."""
    values = sorted(math.inf if s[0] is None else s[0] for s in samples)
    return seconds(values, 0.5), seconds(values, 0.99)


def report(paths):
    results = []
    for path in paths:
        with open(path) as file:
            results.append(json.load(file))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    reply = next((r["reply_timeout"] for r in results if r["memory"]), None)
    lines = [
        "",
        f"## {now} UTC — abuse: floods and memory against the default limits (bench/abuse.sh), "
        f"{os.cpu_count()} cores, {platform.machine()}, a fresh server per scenario"
        + (f", reply timeout {reply} s for the held requests" if reply else ""),
        "",
        f"Probes: {PROBES} of each kind spread over the flood (the baseline: over {BASELINE_WINDOW:.0f} s just "
        "before it, same server); p99 of 50 is the slowest; × is the ratio to that baseline; "
        f">{PROBE_TIMEOUT * 1000:.0f}: no answer within {PROBE_TIMEOUT:.0f} s.",
        "",
        "| flood | probes | health, new connection: p50 / p99 ms | health, kept-alive: p50 / p99 ms "
        "| append, kept-alive: p50 / p99 ms | no answer in 5 s (new / kept / append) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        probes = result["probes"]
        base = {kind: quantiles(probes["baseline"][kind]) for kind in KINDS}

        def row(phase, label):
            cells = []
            for kind in KINDS:
                p50, p99 = quantiles(probes[phase][kind])
                if phase == "baseline":
                    cells.append(f"{ms(p50)} / {ms(p99)}")
                else:
                    cells.append(f"{ms(p50)} ({ratio(p50, base[kind][0])}) / {ms(p99)} ({ratio(p99, base[kind][1])})")
            missing = " / ".join(str(sum(s[0] is None for s in probes[phase][kind])) for kind in KINDS)
            when = "none (baseline)" if phase == "baseline" else f"during, over {probes['window']:.0f} s"
            return f"| {label} | {when} | {' | '.join(cells)} | {missing} |"

        lines.append(row("baseline", result["title"]))
        lines.append(row("flood", "″"))
    lines += [
        "",
        "| flood | what the server did | peak connections held / in its accept queue |",
        "|---|---|---:|",
    ]
    for result in results:
        server = result["server"]
        lines.append(
            f"| {result['title']} | {result['outcome']} | {server['max_connections_held']} / {server['max_accept_queue']} |"
        )
    memory = [r["memory"] for r in results if r["memory"]]
    if memory:
        lines += [
            "",
            "| 1,000 held requests, 60 KiB bodies (a `padding` field) | answered 201 | 503 SERVER_BUSY | other "
            "| RSS before MB | peak RSS (VmHWM) MB | peak − before MB | RSS after MB | last answer s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in memory:
            lines.append(
                f"| {m['label']} | {m['created']} | {m['busy']} | {m['other']} | {m['before_mb']:.0f} | {m['peak_mb']:.0f} "
                f"| {m['peak_mb'] - m['before_mb']:.0f} | {m['after_mb']:.0f} | {m['last_answer_s']:.1f} |"
            )
    failures = [f for r in results for f in r["failures"]]
    notes = [n for r in results for n in r["notes"]]
    if failures or notes:
        lines.append("")
    lines += [f"- **Defence failed:** {f}" for f in failures]
    lines += [f"- Note: {n}" for n in notes]
    print("\n".join(lines))
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run")
    one.add_argument("scenario", choices=SCENARIOS)
    one.add_argument("--addr", required=True)
    one.add_argument("--pid", type=int, required=True)
    one.add_argument("--bin", required=True)
    one.add_argument("--out", required=True)
    one.add_argument("--reply-timeout", type=int)
    summary = commands.add_parser("report")
    summary.add_argument("results", nargs="+")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        sys.exit(report(args.results))


if __name__ == "__main__":
    main()
