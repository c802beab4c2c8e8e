"""A real HTTP receiver on loopback for callback tests: it fails a share of requests.

Plain asyncio streams (no framework), so what the platform sends is what is recorded:
each request's delivery id (`X-Fleetbatch-Delivery`), body and whether it was acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import LOOPBACK


@dataclass
class CallbackReceiver:
    """Answers 200 or (with probability `fail_rate`) 503, after `delay_s`."""

    fail_rate: float = 0.5
    delay_s: float = 0.0
    seed: int = 7
    requests: int = 0
    failed: int = 0
    acked: Counter[int] = field(default_factory=Counter)
    bodies: dict[int, dict[str, Any]] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _random: random.Random = field(default_factory=random.Random)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{LOOPBACK}:{port}/callback"

    @property
    def duplicates(self) -> int:
        """Acknowledged deliveries beyond the first of each row."""
        return sum(self.acked.values()) - len(self.acked)

    async def __aenter__(self) -> CallbackReceiver:
        self._random.seed(self.seed)
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)  # a slow application, not a test wait
                if self._random.random() < self.fail_rate:
                    self.failed += 1
                    writer.write(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n")
                else:
                    delivery = int(headers["x-fleetbatch-delivery"])
                    self.acked[delivery] += 1
                    self.bodies[delivery] = json.loads(body)
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
