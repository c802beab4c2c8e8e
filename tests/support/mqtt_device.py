"""A raw MQTT device for tests: our codec over an asyncio stream, every byte under control.

It speaks exactly what a test tells it to (including malformed bytes), and records what the
server sends, so tests can assert on CONNACK codes, SUBACK codes and delivered PUBLISHes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

from fleetbatch.devices import codec
from fleetbatch.devices.auth import make_client_id, sign_password
from fleetbatch.domain.timefmt import to_hour_stamp

from .waiting import wait_until


def credentials(
    device_id: str, secret: str, *, sign_type: str = "1", now_ms: int | None = None
) -> tuple[str, str, str]:
    """(client id, user name, password) as Huawei's device SDK builds them."""
    import time

    stamp = to_hour_stamp(now_ms if now_ms is not None else int(time.time() * 1000))
    return make_client_id(device_id, stamp, sign_type), device_id, sign_password(secret, stamp)


@dataclass
class RawDevice:
    """One TCP (or TLS) connection speaking MQTT through fleetbatch's codec."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: list[codec.Packet] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
    ) -> RawDevice:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context)
        device = cls(reader, writer)
        device._task = asyncio.create_task(device._read())
        return device

    async def _read(self) -> None:
        parser = codec.PacketReader(server_side=False)
        try:
            while data := await self.reader.read(65536):
                self.received.extend(parser.feed(data))
        except (ConnectionError, codec.MalformedPacket):
            pass
        finally:
            self.closed.set()

    def send(self, packet: codec.Packet) -> None:
        self.writer.write(codec.encode(packet))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def connect(
        self, client_id: str, username: str | None, password: str | bytes | None, keepalive_s=60
    ) -> int:
        """Send CONNECT and return the CONNACK's return code."""
        if isinstance(password, str):
            password = password.encode()
        self.send(codec.Connect(client_id, username, password, keepalive_s=keepalive_s))
        connack = await self.expect(codec.Connack)
        return connack.return_code

    async def expect(self, kind: type, *, timeout_s: float = 5.0, where=lambda p: True):
        """The first received packet of `kind` matching `where` (removed from `received`)."""

        def find():
            for index, packet in enumerate(self.received):
                if isinstance(packet, kind) and where(packet):
                    return self.received.pop(index)
            return None

        return await wait_until(find, timeout_s=timeout_s, message=f"no {kind.__name__} arrived")

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        await wait_until(self.closed.is_set, timeout_s=timeout_s, message="still connected")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
