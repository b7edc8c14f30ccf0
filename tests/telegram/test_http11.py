"""The lean HTTP/1.1 transport against scripted servers: framing, keep-alive, errors."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from telegram.error import NetworkError, TimedOut
from telegram.request import RequestData
from telegram.request._requestparameter import RequestParameter

from handlers.telegram.http11 import Http11Request

Answer = Callable[[bytes], bytes | None]  # request bytes -> raw response (None: hang)
CLOSE = "close"  # in a script: the server closes the connection after the previous answer


class Scripted:
    """A loopback server answering each request with the next scripted raw response."""

    def __init__(self, answers: list[Answer | bytes]) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/botTOKEN/getMe"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = self.answers.pop(0)
                raw = answer(head + body) if callable(answer) else answer
                if raw is None:  # never answer: until the client gives up and closes
                    await reader.read()
                    break
                writer.write(raw)
                await writer.drain()
                if b"Connection: close" in raw or b"HTTP/1.0" in raw:
                    break
                if self.answers and self.answers[0] == CLOSE:  # as on an idle timeout
                    self.answers.pop(0)
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[list], Scripted]]:
    servers: list[Scripted] = []

    def start(answers: list) -> Scripted:
        server = Scripted(answers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.server is not None:
            server.server.close()


async def _started(server: Scripted) -> Scripted:
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    return server


def _ok(body: bytes = b'{"ok":true,"result":1}', extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _data(**params: object) -> RequestData:
    return RequestData([RequestParameter.from_input(k, v) for k, v in params.items()])


async def test_keep_alive_json_body_and_framing(serve) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\n{\"ok\"\r\n11;ext=1\r\n:true,\"result\":2}\r\n0\r\n\r\n")
    server = await _started(serve([_ok(), chunked, _ok(b"[]", "Connection: close\r\n"),
                                   b"HTTP/1.0 200 OK\r\n\r\nuntil close"]))
    request = Http11Request()
    async with request:
        markup = {"inline_keyboard": [[{"text": "Oui", "callback_data": "S1|YES"}]]}
        status, body = await request.do_request(
            server.url, "POST", _data(chat_id=7, text="Привет <b>", reply_markup=markup))
        assert (status, json.loads(body)) == (200, {"ok": True, "result": 1})
        head, _, sent = server.requests[0].partition(b"\r\n\r\n")
        assert b"Content-Type: application/json" in head
        assert json.loads(sent) == {"chat_id": 7, "text": "Привет <b>", "reply_markup": markup}
        assert json.loads((await request.do_request(server.url, "POST"))[1])["result"] == 2
        assert server.connections == 1  # kept alive
        assert (await request.do_request(server.url, "POST"))[1] == b"[]"
        assert (await request.do_request(server.url, "POST"))[1] == b"until close"
        assert server.connections == 2  # "Connection: close" was honoured


async def test_a_connection_closed_by_the_server_is_not_reused(serve) -> None:
    server = await _started(serve([_ok(), CLOSE, _ok()]))
    request = Http11Request()
    async with request:
        await request.do_request(server.url, "POST")
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
        status, _ = await request.do_request(server.url, "POST")
        assert status == 200 and server.connections == 2


async def test_timeouts_and_unreachable_servers_are_network_errors(serve) -> None:
    server = await _started(serve([None, _ok()]))
    request = Http11Request(read_timeout=0.1, write_timeout=0.1, connect_timeout=0.1,
                            pool_timeout=0.1)
    async with request:
        with pytest.raises(TimedOut):
            await request.do_request(server.url, "POST")
        status, _ = await request.do_request(server.url, "POST")  # a fresh connection
        assert status == 200 and server.connections == 2
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with pytest.raises(NetworkError):
            await request.do_request(f"http://127.0.0.1:{port}/botX/getMe", "POST")
        garbage = await _started(serve([b"SPDY/9 what\r\n\r\n"]))
        with pytest.raises(NetworkError):
            await request.do_request(garbage.url, "POST")
