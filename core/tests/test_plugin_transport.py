"""tongcrm.plugin.transport: httpx's transport over plain asyncio sockets, against a server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tongcrm.plugin.transport import AsyncioBackend, platform_transport

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


class _Server:
    """An HTTP/1.1 server of a few lines: each request (head and Content-Length body) is handed to ``reply``,
    which writes the answer and says whether to keep the connection open."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.bodies: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.bodies.append(body)
                if not await self.reply(body, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def _serving(reply: Reply, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[_Server, int]]:
    server = _Server(reply)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, port
    finally:
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), 5)


def _answer(body: bytes, *, headers: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{headers}\r\n".encode() + body


async def _echo(body: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(_answer(b"got " + body))
    return True


async def _post(
    transport: httpx.AsyncBaseTransport, url: str, body: bytes, **timeouts: float
) -> httpx.Response:
    extensions = {"timeout": {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0, **timeouts}}
    request = httpx.Request("POST", url, content=body, extensions=extensions)
    response = await transport.handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


async def test_requests_answered_on_one_kept_alive_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    # the connection is ours (AsyncioBackend), not httpx's default backend: an httpx that stops driving the
    # pool the transport puts in its place would still answer, and only this count would tell
    opened: list[str] = []
    connect_tcp = AsyncioBackend.connect_tcp

    async def counted(self: AsyncioBackend, host: str, port: int, *args: object, **kwargs: object) -> object:
        opened.append(f"{host}:{port}")
        return await connect_tcp(self, host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncioBackend, "connect_tcp", counted)
    transport = platform_transport()
    async with _serving(_echo) as (server, port):
        try:
            for n in range(3):
                response = await _post(transport, f"http://127.0.0.1:{port}/router/rest", b"n=%d" % n)
                assert response.status_code == 200 and response.content == b"got n=%d" % n
        finally:
            await transport.aclose()
    assert server.bodies == [b"n=0", b"n=1", b"n=2"]
    assert server.connections == 1 and opened == [f"127.0.0.1:{port}"]


async def test_chunked_gzip_and_large_answers_read_whole() -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: several reads of the connection

    async def reply(body: bytes, writer: asyncio.StreamWriter) -> bool:
        if body == b"chunked":
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
        elif body == b"gzip":
            writer.write(_answer(gzip.compress(b'{"a": 1}'), headers="content-encoding: gzip\r\n"))
        else:
            writer.write(_answer(big))
        return True

    transport = platform_transport()
    async with _serving(reply) as (_server, port):
        try:
            url = f"http://127.0.0.1:{port}/"
            assert (await _post(transport, url, b"chunked")).content == b"hello world"
            assert (await _post(transport, url, b"gzip")).content == b'{"a": 1}'
            assert (await _post(transport, url, b"big")).content == big
        finally:
            await transport.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def once(body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(b"ok"))  # keep-alive by HTTP/1.1's default, but closed right after
        return False

    transport = platform_transport()
    async with _serving(once) as (server, port):
        try:
            for _ in range(3):
                assert (await _post(transport, f"http://127.0.0.1:{port}/", b"x")).content == b"ok"
                await asyncio.sleep(0.05)  # the close reaches the idle connection
        finally:
            await transport.aclose()
    assert server.connections == 3


async def test_timeouts_and_refusals_are_httpx_errors() -> None:
    async def silent(body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1)
        return False

    transport = platform_transport()
    async with _serving(silent) as (_server, port):
        try:
            with pytest.raises(httpx.ReadTimeout):
                await _post(transport, f"http://127.0.0.1:{port}/", b"x", read=0.2)
        finally:
            await transport.aclose()
    refused = platform_transport()
    try:
        with pytest.raises(httpx.ConnectError):
            await _post(refused, f"http://127.0.0.1:{port}/", b"x")  # the listener is closed now
    finally:
        await refused.aclose()


async def test_the_server_closing_mid_answer_is_a_transport_error() -> None:
    async def cut(body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        return False

    transport = platform_transport()
    async with _serving(cut) as (_server, port):
        try:
            with pytest.raises(httpx.TransportError):
                await _post(transport, f"http://127.0.0.1:{port}/", b"x")
        finally:
            await transport.aclose()


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_https_verified_against_the_context_and_refused_without_it(tmp_path: Path) -> None:
    await _https(tmp_path)


def test_the_transport_works_on_uvloop_the_loop_serve_runs(tmp_path: Path) -> None:
    """`tongcrm serve` runs uvloop, and its in-process jobs sync the platforms on it: a plain HTTP and an HTTPS
    exchange on a uvloop loop (its transports are not asyncio.Transport instances; an isinstance assertion in
    the connection's protocol failed every platform call there, and the demo hung on stopping)."""
    uvloop = pytest.importorskip("uvloop")

    async def both() -> None:
        transport = platform_transport()
        async with _serving(_echo) as (server, port):
            try:
                for n in range(2):
                    response = await _post(transport, f"http://127.0.0.1:{port}/router/rest", b"n=%d" % n)
                    assert response.content == b"got n=%d" % n
            finally:
                await transport.aclose()
        assert server.connections == 1
        await _https(tmp_path)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert type(runner.get_loop()).__module__.startswith("uvloop")
        runner.run(both())


async def _https(tmp_path: Path) -> None:
    cert_path, key_path = _certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    trusting = ssl.create_default_context(cafile=str(cert_path))
    async with _serving(_echo, tls=server_tls) as (server, port):
        transport = platform_transport(ssl_context=trusting)
        try:
            for _ in range(2):
                response = await _post(transport, f"https://localhost:{port}/", b"secret")
                assert response.content == b"got secret"
        finally:
            await transport.aclose()
        assert server.connections == 1
        default = platform_transport()  # the system's authorities: a self-signed certificate is refused
        try:
            with pytest.raises(httpx.ConnectError):
                await _post(default, f"https://localhost:{port}/", b"secret")
        finally:
            await default.aclose()
