"""Real peers for the notifier's tests: fresh migrated databases, HTTP receivers that
record (and verify) what they are sent, an aiosmtpd server, a steppable clock."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text

from cli.devstack import procs
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.messages import DeploymentFailed, DeploymentSucceeded, Envelope, ErrorInfo
from tests.fixtures.isolation import create_database, drop_database


@dataclass
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def _peer_gone(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


class Receiver:
    """A real HTTP endpoint. ``replies`` are used up in order (then 204). ``accepted`` holds
    the requests it answered 2xx to a client still connected; with ``hold()`` requests
    wait until ``release()``, and those whose client died meanwhile are not accepted."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.replies: list[Reply] = []
        self.accepted: list[dict[str, Any]] = []
        self.attempts = 0
        self.held = 0
        self.aborted = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.attempts += 1
                    reply = receiver.replies.pop(0) if receiver.replies else Reply()
                if reply.delay:
                    time.sleep(reply.delay)
                    if _peer_gone(self.connection):  # the client gave up waiting
                        with receiver.lock:
                            receiver.aborted += 1
                        self.close_connection = True
                        return
                record = {"headers": dict(self.headers), "raw": raw, "body": json.loads(raw)}
                ok = 200 <= reply.status < 300
                with receiver.lock:  # hold() takes the lock: whoever passed is on record
                    passed = receiver.gate.is_set()
                    if passed and ok:
                        receiver.accepted.append(record)
                    elif not passed:
                        receiver.held += 1
                if not passed:
                    receiver.gate.wait()
                    if _peer_gone(self.connection):
                        with receiver.lock:
                            receiver.aborted += 1
                        self.close_connection = True
                        return
                    if ok:
                        with receiver.lock:
                            receiver.accepted.append(record)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def hold(self) -> None:
        with self.lock:
            self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.accepted]

    def verify(self, request: dict[str, Any]) -> bool:
        assert self.secret is not None
        ts = request["headers"]["X-Sitefleet-Timestamp"]
        mac = hmac.new(self.secret.encode(), ts.encode() + b"." + request["raw"], hashlib.sha256)
        return request["headers"]["X-Sitefleet-Signature"] == "sha256=" + mac.hexdigest()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(secret="s3cret")
    yield server
    server.close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(
            {"to": list(envelope.rcpt_tos), "data": envelope.content.decode("utf8", "replace")}
        )
        return "250 OK"


def start_smtp(port: int, mailbox: Mailbox) -> Controller:
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    return controller


@pytest.fixture(scope="session")
async def notifier_db_url() -> AsyncIterator[str]:
    """A migrated database of the notifier's tests alone (the scheduler and the courier
    act on every row, so the shared test database would make tests see each other)."""
    name = f"sitefleet_test_ntf_{uuid.uuid4().hex[:10]}"
    yield await create_database(name)
    await drop_database(name)


@pytest.fixture
async def db(notifier_db_url: str) -> AsyncIterator[SessionMaker]:
    """That database, emptied before each test."""
    engine = create_engine(notifier_db_url, application_name="tests", pool_size=4)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE alert_groups, notification_deliveries, notifier_processed_events,"
                " notification_channel_health, notification_channels, tenants CASCADE"
            )
        )
    yield create_sessionmaker(engine)
    await engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def failed(
    site_id: str,
    *,
    tenant_id: str = "ten_a",
    message: str = "nginx answered 502",
    code: str = "health_check_failed",
) -> Envelope:
    return DeploymentFailed(
        deployment_id=f"dep_{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        site_id=site_id,
        domain=f"{site_id}.example",
        generation=1,
        status="failed",
        error=ErrorInfo(code=code, message=message),
    ).envelope()


def succeeded(site_id: str, *, tenant_id: str = "ten_a") -> Envelope:
    return DeploymentSucceeded(
        deployment_id=f"dep_{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        site_id=site_id,
        domain=f"{site_id}.example",
        generation=2,
        status="live",
    ).envelope()


def free_port() -> int:
    return procs.free_port()
