"""`fleetbatch serve`: the API on HTTP and HTTPS and the device side, over one runtime.

Startup order matters: the ports are bound first (HTTP, HTTPS, and MQTT and MQTTS unless an
external broker carries the devices), so a second server on the same ports fails at once
(exit code 2) without touching the database or the TLS files; then the TLS files, the
runtime (which migrates the store), the device channel and the app's lifespan; then uvicorn
serves on the bound sockets, and `/health` turns ok once every listener accepts.

The runner, not uvicorn, owns SIGINT and SIGTERM: the first asks every listener to stop
(requests in flight get `shutdown_timeout_s`), a second stops waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import gc
import logging
import logging.config
import math
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
import uvicorn.config
from fastapi import FastAPI

from fleetbatch.api import Phase, create_app, set_phase
from fleetbatch.clock import Clock
from fleetbatch.devices.authenticator import DeviceAuthenticator
from fleetbatch.devices.channel import DeviceChannel
from fleetbatch.devices.presence import PresenceRecorder
from fleetbatch.devices.transport import BuiltinTransport
from fleetbatch.domain.errors import FleetbatchError
from fleetbatch.engine.engine import Engine, EngineConfig
from fleetbatch.engine.executors import build_executors
from fleetbatch.engine.outbox import OutboxConfig, OutboxDelivery
from fleetbatch.engine.shadow_reports import ShadowRecorder
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from fleetbatch.tls import TlsFiles, device_ssl_context, ensure_tls_files

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PORT_UNAVAILABLE = 2
# the shell's convention for "ended by SIGINT", for a Ctrl-C before the handlers are in place
EXIT_INTERRUPTED = 130

BACKLOG = 2048
# beyond uvicorn's own graceful timeout: its 0.1 s ticks and closing the listeners
SHUTDOWN_GRACE_S = 1.0
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger(__name__)


class PortUnavailable(FleetbatchError):
    """A listening port cannot be bound: in use, not permitted, or no such address."""

    def __init__(self, port: int, flag: str, reason: str) -> None:
        super().__init__(f"port {port} ({flag}) {reason}")
        self.port = port
        self.flag = flag


class Server:
    """One fleetbatch server: the API on an HTTP and an HTTPS listener over one runtime.

    `await Server(settings).serve(ready=..., stop=...)` runs until stopped or signalled;
    `async with Server(settings) as server:` serves for the duration of the block. The
    bound ports (port 0 picks a free one) are `http_port` and `https_port` once started.
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        # the services' clock (tests move it forward); the system clock by default
        self.clock = clock
        self.runtime: Runtime | None = None
        self.app: FastAPI | None = None
        self.tls: TlsFiles | None = None
        self._sockets: dict[str, socket.socket] = {}
        self._ports: dict[str, int] = {}
        self._servers: list[_Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanup = contextlib.AsyncExitStack()
        self._stop_requested = asyncio.Event()
        self.channel: DeviceChannel | None = None
        self.presence: PresenceRecorder | None = None
        self.authenticator: DeviceAuthenticator | None = None
        self.engine: Engine | None = None
        self.shadows: ShadowRecorder | None = None
        self.outbox: OutboxDelivery | None = None
        self._began = False
        self._stopped = False

    @property
    def http_port(self) -> int:
        """The bound plain-HTTP port."""
        return self._ports["http"]

    @property
    def https_port(self) -> int:
        """The bound HTTPS port."""
        return self._ports["https"]

    @property
    def mqtt_port(self) -> int:
        """The bound plain MQTT port of the built-in device transport."""
        return self._device_port("mqtt")

    @property
    def mqtts_port(self) -> int:
        """The bound MQTT-over-TLS port of the built-in device transport."""
        return self._device_port("mqtts")

    def _device_port(self, name: str) -> int:
        if name not in self._ports:
            raise RuntimeError(
                f"no {name} port: devices connect to the external broker {self.settings.broker}"
                if self.settings.broker
                else "the server has not bound its ports yet"
            )
        return self._ports[name]

    @property
    def urls(self) -> list[str]:
        """The base URL of each listener."""
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return [f"http://{host}:{self.http_port}", f"https://{host}:{self.https_port}"]

    @property
    def device_urls(self) -> list[str]:
        """Where devices connect: the built-in MQTT listeners, or the external broker."""
        if self.settings.broker:
            return [self.settings.broker]
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return [f"mqtt://{host}:{self.mqtt_port}", f"mqtts://{host}:{self.mqtts_port}"]

    async def start(self) -> None:
        """Bind, prepare TLS, open the runtime and serve; returns once every listener accepts.

        Raises PortUnavailable when a port cannot be bound, other FleetbatchErrors when
        TLS or the store cannot be opened; whatever was opened is closed again.
        """
        if self._began:
            raise RuntimeError("a Server starts once")
        self._began = True
        log_level = _uvicorn_log_level(self.settings.log_level)
        self._bind()
        try:
            # RSA key generation on first start takes a while: keep it off the loop
            self.tls = await asyncio.to_thread(ensure_tls_files, self.settings)
            self.runtime = await Runtime.open(self.settings, clock=self.clock)
            self._cleanup.push_async_callback(self.runtime.close)
            await self._start_devices(self.runtime)
            await self._start_engine(self.runtime)
            self._start_outbox(self.runtime)
            self.app = create_app(self.runtime)
            self.app.state.channel = self.channel
            self.app.state.presence = self.presence
            self.app.state.authenticator = self.authenticator
            # the app's lifespan runs once here, not once per uvicorn listener
            await self._cleanup.enter_async_context(self.app.router.lifespan_context(self.app))
            for name in ("http", "https"):
                self._start_listener(name, self._sockets[name], log_level)
            await self._until_listening()
            set_phase(self.app, Phase.READY)
        except BaseException:
            await self.stop()
            raise

    def request_stop(self) -> None:
        """Ask the server to stop; asked again, it stops waiting for requests in flight."""
        if self._stop_requested.is_set():
            for server in self._servers:
                server.force_exit = True
        self._stop_requested.set()

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Until `request_stop()`, `stop` is set, or a listener ends on its own."""
        watchers: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stop_requested.wait())]
        if stop is not None:
            watchers.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait([*watchers, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for watcher in watchers:
                watcher.cancel()

    async def stop(self) -> None:
        """Stop accepting, give requests in flight `shutdown_timeout_s`, close the runtime.

        Re-raises the error of a listener that failed on its own, after cleaning up.
        """
        if self._stopped:
            return
        self._stopped = True
        if self.app is not None:
            set_phase(self.app, Phase.STOPPING)
        for server in self._servers:
            server.should_exit = True
        try:
            await self._finish_listeners()
        finally:
            # the device transport's servers own the MQTT sockets until they are closed
            await self._close_runtime()
            for sock in self._sockets.values():
                sock.close()
        for task in self._tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def serve(
        self,
        *,
        ready: asyncio.Event | None = None,
        stop: asyncio.Event | None = None,
        handle_signals: bool = True,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Start, set `ready`, serve until `stop` is set (or SIGINT/SIGTERM), then stop.

        The startup line goes to stderr. If startup fails the error is raised and `ready`
        is never set, so a caller waiting on it should also watch this coroutine.
        """
        with self._signals_handled(enabled=handle_signals):
            await self.start()
            try:
                assert self.runtime is not None
                print(
                    f"fleetbatch: serving {' '.join(self.urls)}, "
                    f"devices on {' '.join(self.device_urls)} "
                    f"(data dir {self.settings.data_dir.resolve()}, "
                    f"database {self.runtime.store.dialect})",
                    file=sys.stderr,
                    flush=True,
                )
                if on_ready is not None:
                    on_ready()
                if ready is not None:
                    ready.set()
                await self.wait(stop)
            finally:
                await self.stop()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.stop()

    def _bind(self) -> None:
        host = self.settings.host
        wanted = {
            "http": (self.settings.http_port, "--http-port"),
            "https": (self.settings.https_port, "--https-port"),
        }
        if not self.settings.broker:
            wanted["mqtt"] = (self.settings.mqtt_port, "--mqtt-port")
            wanted["mqtts"] = (self.settings.mqtts_port, "--mqtts-port")
        try:
            for name, (port, flag) in wanted.items():
                self._sockets[name] = bind_listener(host, port, flag)
                self._ports[name] = int(self._sockets[name].getsockname()[1])
        except BaseException:
            for sock in self._sockets.values():
                sock.close()
            raise

    async def _start_engine(self, runtime: Runtime) -> None:
        """The batch engine over the device channel; stopped before the channel closes.

        The shadow recorder runs whether or not this node runs the engine: the reports of
        the devices it serves reach only this node.
        """
        assert self.channel is not None
        self.shadows = shadows = ShadowRecorder(
            runtime.store, flush_s=self.settings.presence_flush_s
        )
        self.channel.add_uplink_handler(shadows.on_uplink)
        shadows_task = asyncio.create_task(shadows.run(), name="fleetbatch-shadow-reports")

        async def stop_shadows() -> None:
            shadows_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shadows_task
            await shadows.flush()

        self._cleanup.push_async_callback(stop_shadows)
        if not self.settings.engine_enabled:
            return
        executors = build_executors(
            self.channel, runtime.clock, command_timeout_s=self.settings.command_timeout_s
        )
        self.engine = Engine(
            runtime.store,
            runtime.clock,
            runtime.tasks,
            executors,
            channel=self.channel,
            config=EngineConfig.from_settings(self.settings),
        )
        self._cleanup.push_async_callback(self.engine.close)
        await self.engine.start()

    def _start_outbox(self, runtime: Runtime) -> None:
        """The callback delivery loop; stopped before the runtime closes."""
        if not self.settings.outbox_enabled:
            return
        self.outbox = outbox = OutboxDelivery(
            runtime.store, runtime.clock, OutboxConfig.from_settings(self.settings)
        )
        task = asyncio.create_task(outbox.run(), name="fleetbatch-outbox")

        async def stop_outbox() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self._cleanup.push_async_callback(stop_outbox)

    async def _start_devices(self, runtime: Runtime) -> None:
        """The device channel: the built-in transport on the MQTT ports, or a broker client.

        Closed (in reverse order) before the runtime: the channel first, so every
        disconnect is recorded, then a last presence flush.
        """
        settings = self.settings
        self.presence = presence = PresenceRecorder(
            runtime.registry, flush_s=settings.presence_flush_s
        )
        presence_task = asyncio.create_task(presence.run(), name="fleetbatch-presence")

        async def stop_presence() -> None:
            presence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await presence_task
            await presence.flush()

        self._cleanup.push_async_callback(stop_presence)
        self.authenticator = authenticator = DeviceAuthenticator(
            runtime.registry, runtime.clock, tolerance_s=settings.mqtt_timestamp_tolerance_s
        )
        self._cleanup.push_async_callback(authenticator.close)
        channel: DeviceChannel
        if settings.broker:
            if settings.broker_password is None:
                log.warning(
                    "broker.no_password: the EMQX auth, ACL and events endpoints answer 503 "
                    "until FLEETBATCH_BROKER_PASSWORD is set"
                )
            # only a broker deployment needs the MQTT client library loaded
            from fleetbatch.devices.broker import BrokerChannel

            channel = BrokerChannel(
                settings.broker,
                client_id=settings.platform_client_id,
                username=settings.broker_username,
                password=(
                    settings.broker_password.get_secret_value()
                    if settings.broker_password
                    else None
                ),
                share_group=settings.broker_share_group or None,
                ca_file=settings.broker_ca_file,
                clock=runtime.clock,
                connect_timeout_s=settings.mqtt_connect_timeout_s,
            )
            self._cleanup.push_async_callback(channel.close)
            await channel.start()
        else:
            # no device is connected to a server that is only starting
            await runtime.registry.devices.mark_all_offline()
            transport = BuiltinTransport(
                authenticator,
                runtime.clock,
                presence=presence,
                max_packet_bytes=settings.mqtt_max_packet_bytes,
                connect_timeout_s=settings.mqtt_connect_timeout_s,
            )
            channel = transport
            self._cleanup.push_async_callback(transport.close)
            await transport.start()
            assert self.tls is not None
            await transport.listen(self._sockets["mqtt"])
            await transport.listen(self._sockets["mqtts"], device_ssl_context(self.tls))
        self.channel = channel

    def _start_listener(self, name: str, sock: socket.socket, log_level: int) -> None:
        assert self.app is not None
        tls = self.tls if name == "https" else None
        config = uvicorn.Config(
            self.app,
            lifespan="off",  # the runner enters the app's lifespan itself, once
            log_config=None,  # the process configures logging (run()), not a library call
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(self.settings.shutdown_timeout_s),
            ssl_certfile=tls.cert if tls else None,
            ssl_keyfile=tls.key if tls else None,
            # legacy HTTPS clients present a client certificate: never ask for one
            ssl_cert_reqs=ssl.CERT_NONE,
        )
        config.load()
        server = _Listener(config)
        self._servers.append(server)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"fleetbatch-{name}")
        self._tasks.append(task)

    async def _until_listening(self) -> None:
        listening: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(server.listening.wait() for server in self._servers))
        )
        try:
            await asyncio.wait([listening, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            listening.cancel()
        for task in self._tasks:
            if task.done():
                task.result()  # raises the listener's startup error
                raise RuntimeError(f"listener {task.get_name()} ended during startup")

    async def _finish_listeners(self) -> None:
        if not self._tasks:
            return
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s + SHUTDOWN_GRACE_S):
                await asyncio.wait(self._tasks)
        except TimeoutError:
            log.warning("server.shutdown_timed_out timeout_s=%s", self.settings.shutdown_timeout_s)
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(self._tasks)

    async def _close_runtime(self) -> None:
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                await self._cleanup.aclose()
        except TimeoutError:
            log.warning("server.close_timed_out timeout_s=%s", self.settings.shutdown_timeout_s)

    @contextlib.contextmanager
    def _signals_handled(self, *, enabled: bool) -> Iterator[None]:
        """SIGINT and SIGTERM call `request_stop` while serving; the old handlers come back."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)


class _Listener(uvicorn.Server):
    """uvicorn's server on one socket, minus its signal capture, plus a `listening` event."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # the runner handles signals for every listener; uvicorn's would replace ours
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.listening.set()


# Every message allocates a few short-lived containers (futures, payload dicts, uplinks);
# with the default threshold of 700 the collector ran hundreds of times a second and cost
# 10-20% of the device transport's round-trip rate (bench/transport.py).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """For a server process, once started: park what startup built, collect less often.

    Process-wide and never undone, so only `run()` (the `fleetbatch serve` process) calls it,
    not a `Server` embedded in another program or a test.

    `gc.freeze()` moves everything allocated so far (modules, the app, the ORM's caches) to
    a permanent generation, so the full collections that still happen scan only what the
    server made since; a higher gen-0 threshold makes the young collections rarer.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def bind_listener(host: str, port: int, flag: str) -> socket.socket:
    """A listening TCP socket on `host:port`; PortUnavailable, naming `flag`, if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # a restart may reuse a port whose old connections linger in TIME_WAIT; a port that
        # another process listens on is still refused
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise PortUnavailable(port, flag, _bind_failure(exc, host)) from None
    return sock


async def serve(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until `stop` is set or SIGINT/SIGTERM arrives; `Server` exposes the ports.

    `on_ready` runs once every listener accepts (the process-wide GC tuning of `run`).
    """
    await Server(settings).serve(ready=ready, stop=stop, on_ready=on_ready)


def run(settings: Settings) -> int:
    """Serve in this process until SIGINT or SIGTERM; returns the process exit code.

    0 after a clean stop, 2 when a port cannot be bound, 1 when fleetbatch cannot start
    (TLS files, secret key, database); each failure is one line on stderr.
    """
    try:
        _configure_logging(_uvicorn_log_level(settings.log_level))
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings, on_ready=tune_gc))
    except PortUnavailable as exc:
        return _fail(exc, EXIT_PORT_UNAVAILABLE)
    except FleetbatchError as exc:
        return _fail(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _fail(exc: FleetbatchError, code: int) -> int:
    print(f"fleetbatch: {exc.message}", file=sys.stderr, flush=True)
    return code


def _bind_failure(exc: OSError, host: str) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot be bound: unknown host {host!r}"
    if exc.errno == errno.EADDRINUSE:
        return "is already in use"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "is not permitted"
    return f"cannot be bound on {host}: {exc.strerror or exc}"


def _uvicorn_log_level(name: str) -> int:
    # settings accept only uvicorn's level names
    return uvicorn.config.LOG_LEVELS[name]


def _configure_logging(level: int) -> None:
    """uvicorn's console format for its own loggers and fleetbatch's, at `level`."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["fleetbatch"] = {"handlers": ["default"], "level": level, "propagate": False}
    logging.config.dictConfig(config)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (it roughly doubles socket throughput), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
