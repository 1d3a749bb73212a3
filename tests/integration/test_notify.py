"""Mail, Seq, webhooks and pings against real local servers; no notifier can fail a backup."""

from __future__ import annotations

import asyncio
import email
import io
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from backupd import logs
from backupd.config import EmailConfig, LogConfig
from backupd.logs import setup_logging
from backupd.notify import Report, State, webhook
from backupd.notify import email as email_notify
from backupd.notify.base import NotifyError
from tests.conftest import S3_SECRET, pg_env, run_backupd, storage_env
from tests.integration.test_prune import put_backup
from tests.servers import FaultProxy, PostgresServer, Received, free_port, http_server

# The test SMTP server takes AUTH without TLS (EMAIL_TLS=none): no certificates here.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

SMTP_USER, SMTP_PASSWORD = "mailer", "smtp-Secret-5150"
SEQ_KEY = "seq-Api-Key-7788"
RECIPIENTS = ["ops@example.com", "dba@example.com"]


@dataclass
class Inbox:
    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        self.messages.append(
            (envelope.mail_from, envelope.rcpt_tos, email.message_from_bytes(envelope.content))
        )
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        if ok:
            self.logins.append(SMTP_USER)
        return AuthResult(success=ok)


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=inbox.authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    yield port, inbox
    controller.stop()


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Received]]]:
    """A local HTTP server that records every request: Seq, webhooks and pings all land here
    (paths under ``/missing`` are answered 404; under ``/moved/3xx``, that redirect to the rest
    of the path)."""
    seen: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            seen.append(
                Received(self.command, self.path, dict(self.headers), self.rfile.read(length))
            )
            if self.path.startswith("/missing"):
                self.send_response(404)
            elif self.path.startswith("/moved/"):
                _, _, status, rest = self.path.split("/", 3)
                self.send_response(int(status))
                self.send_header("Location", f"/{rest}")
            else:
                self.send_response(201 if self.path.startswith("/api/events") else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _record

        def log_message(self, *args: Any) -> None:
            return None

    with http_server(Handler) as url:
        yield url, seen


def mail_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "EMAIL_SMTP": "127.0.0.1",
        "EMAIL_PORT": str(port),
        "EMAIL_TLS": "none",
        "EMAIL_USER": SMTP_USER,
        "EMAIL_PASSWORD": SMTP_PASSWORD,
        "EMAIL_FROM": "backupd@example.com",
        "EMAIL_TO": ", ".join(RECIPIENTS),
        **extra,
    }


@pytest.fixture
def shop(pg: PostgresServer) -> str:
    name = f"shop_{uuid.uuid4().hex[:8]}"
    pg.create_database(name, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g;")
    return name


def test_success_and_failure_mails(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        **mail_env(port),
        "TIMEZONE": "Europe/Berlin",
    }

    good = run_backupd("once", env=env)
    bad = run_backupd("once", env={**env, "DB_PASSWORD": "wrong"})

    assert good.returncode == 0, good.stdout + good.stderr
    assert bad.returncode == 1
    assert inbox.logins == [SMTP_USER, SMTP_USER]
    (sender, recipients, success), (_, _, failure) = inbox.messages
    assert sender == "backupd@example.com"
    assert recipients == RECIPIENTS
    assert success["Subject"] == f"[backupd] default: backup of {shop} succeeded"
    text = success.get_payload(decode=True).decode()
    for fragment in (
        "Object:     backups/",
        ".dump",
        "Size:",
        "bytes",
        "Duration:",
        "/s",
        "SHA-256:",
    ):
        assert fragment in text
    assert " CET" in text or " CEST" in text  # local time in TIMEZONE
    assert failure["Subject"] == f"[backupd] default: backup of {shop} FAILED"
    failed = failure.get_payload(decode=True).decode()
    assert "Step:     connect" in failed
    assert "password authentication failed" in failed


def test_a_missing_bucket_leaves_nothing_and_the_mail_says_so(
    pg: PostgresServer, shop: str, moto_url: str, smtp: tuple[int, Inbox]
) -> None:
    """No object can exist in a bucket that does not exist: its removal finds nothing."""
    port, inbox = smtp
    env = {**pg_env(pg, shop), **storage_env(moto_url, "nobucket"), **mail_env(port)}

    result = run_backupd("once", env=env)

    said = result.stdout + result.stderr
    assert result.returncode == 1, said
    assert "bucket 'nobucket'" in said and "does not exist (STORAGE_BUCKET_NAME)" in said
    assert "could not be removed" not in said and "could not remove" not in said
    assert "removed backups/" in said  # the removal was tried, and found nothing
    ((_, _, failure),) = inbox.messages
    assert "Nothing was stored for this run" in failure.get_payload(decode=True).decode()


async def test_a_database_named_with_a_line_break_still_gets_its_mail(
    smtp: tuple[int, Inbox],
) -> None:
    port, inbox = smtp
    config = EmailConfig.model_validate(mail_env(port))
    name = "line1\nBcc: evil@example.com"

    report = Report("t", name, "postgres", State.FAILED, datetime.now(UTC))
    await email_notify.send_all(config, [report])

    ((_, recipients, message),) = inbox.messages
    assert recipients == RECIPIENTS
    assert message["Subject"] == "[backupd] t: backup of line1\\nBcc: evil@example.com FAILED"


class _CappedController(Controller):
    """An SMTP server that, like Exchange Online, refuses a client's connection beyond
    ``cap`` open at once (421), and takes a moment over each mail."""

    def __init__(self, inbox: Inbox, port: int, cap: int) -> None:
        super().__init__(inbox, hostname="127.0.0.1", port=port)
        self.cap = cap
        self.open = 0
        self.refused = 0

    def factory(self) -> SMTP:
        controller = self

        class Capped(SMTP):
            counted = False

            def connection_made(self, transport: Any) -> None:
                if controller.open >= controller.cap:
                    controller.refused += 1
                    transport.write(b"421 4.3.2 Concurrent connections limit exceeded\r\n")
                    transport.close()
                    return
                controller.open += 1
                self.counted = True
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                if self.counted:
                    controller.open -= 1
                    super().connection_lost(error)

        return Capped(self.handler, **self.SMTP_kwargs)


class _SlowInbox(Inbox):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)


def test_a_runs_mails_go_over_one_connection_to_a_relay_that_caps_them(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """Four databases, four mails, through a relay that allows two connections at once."""
    names = [f"capped_{i}_{uuid.uuid4().hex[:6]}" for i in range(4)]
    for name in names:
        pg.create_database(name, "CREATE TABLE t AS SELECT 1 AS x;")
    inbox = _SlowInbox()
    controller = _CappedController(inbox, free_port(), cap=2)
    controller.start()
    try:
        env = {
            **pg_env(pg, ",".join(names)),
            **storage_env(moto_url, bucket),
            **mail_env(controller.port),
        }
        del env["EMAIL_USER"], env["EMAIL_PASSWORD"]
        result = run_backupd("once", env=env)
    finally:
        controller.stop()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "mail about" not in result.stdout
    assert controller.refused == 0
    subjects = [message["Subject"] for _, _, message in inbox.messages]
    assert subjects == [f"[backupd] default: backup of {name} succeeded" for name in names]


class _PickyInbox(Inbox):
    """A relay that takes mail for ops@ and refuses dba@ (not a mailbox it relays to)."""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("dba@"):
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_a_recipient_the_relay_refuses_is_a_failure_naming_it() -> None:
    """The relay takes the mail for the other recipient: the SMTP client raises nothing then."""
    inbox = _PickyInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        env = mail_env(controller.port)
        del env["EMAIL_USER"], env["EMAIL_PASSWORD"]
        config = EmailConfig.model_validate(env)
        report = Report("t", "shop", "postgres", State.FAILED, datetime.now(UTC))
        with pytest.raises(NotifyError) as refused:
            await email_notify.send_all(config, [report])
    finally:
        controller.stop()

    said = str(refused.value)
    assert "dba@example.com: 550 5.7.1 Relaying denied" in said and "EMAIL_TO" in said
    assert "ops@example.com" not in said
    ((_, recipients, _),) = inbox.messages
    assert recipients == ["ops@example.com"]


def test_mail_only_on_failure_when_asked(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        **mail_env(port, EMAIL_ON="failure"),
    }

    assert run_backupd("once", env=env).returncode == 0
    assert run_backupd("once", env={**env, "DB_DATABASE": "missing_db"}).returncode == 1

    assert [m["Subject"].rsplit(" ", 1)[-1] for _, _, m in inbox.messages] == ["FAILED"]


def test_dead_smtp_and_dead_seq_leave_the_backup_alone(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str
) -> None:
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        **mail_env(free_port()),
        "SEQ_URL": f"http://127.0.0.1:{free_port()}",
    }
    started = time.monotonic()

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    assert "backup of default" in result.stdout and "succeeded" in result.stdout
    assert f"mail about {shop} failed" in result.stdout
    assert "cannot send logs to Seq: SEQ_URL: [Errno " in result.stdout
    assert "HTTPConnectionPool" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_seq_gets_structured_events(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str, receiver: tuple[str, list[Received]]
) -> None:
    url, seen = receiver
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        "SEQ_URL": url,
        "SEQ_API_KEY": SEQ_KEY,
        "APP_ENV": "staging",
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    posts = [r for r in seen if r.path == "/api/events/raw"]
    assert posts, [r.path for r in seen]
    assert all(r.headers.get("X-Seq-ApiKey") == SEQ_KEY for r in posts)
    events = [event for r in posts for event in json.loads(r.body)["Events"]]
    (done,) = [e for e in events if e["Properties"].get("Result") == "succeeded"]
    properties = done["Properties"]
    assert properties["Application"] == "backupd"
    assert properties["Environment"] == "staging"
    assert properties["Target"] == "default"
    assert properties["Database"] == shop
    assert properties["Engine"] == "postgres"
    assert properties["Key"].endswith(".dump")
    assert properties["Bytes"] > 0
    assert properties["DurationSeconds"] > 0


def test_seq_gets_structured_verify_events(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str, receiver: tuple[str, list[Received]]
) -> None:
    """A verify's result is a structured event as a backup's is: Kind, Result, Database."""
    url, seen = receiver
    env = {**pg_env(pg, shop), **storage_env(moto_url, bucket)}
    assert run_backupd("once", env=env).returncode == 0

    result = run_backupd("verify", env={**env, "SEQ_URL": url})

    assert result.returncode == 0, result.stdout + result.stderr
    posts = [r for r in seen if r.path == "/api/events/raw"]
    events = [event for r in posts for event in json.loads(r.body)["Events"]]
    (verified,) = [e for e in events if e["Properties"].get("Kind") == "verify"]
    properties = verified["Properties"]
    assert properties["Result"] == "succeeded"
    assert properties["Target"] == "default"
    assert properties["Database"] == shop
    assert properties["Key"].endswith(".dump")


def test_the_last_events_reach_seq_when_logging_closes(
    receiver: tuple[str, list[Received]],
) -> None:
    """A run ends by closing its logs: every event logged before that is sent, each time."""
    url, seen = receiver
    config = LogConfig.model_validate({"SEQ_URL": url, "SEQ_API_KEY": SEQ_KEY})
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        for run in range(20):
            seen.clear()
            logs = setup_logging(config, [], io.StringIO())
            for n in range(5):
                logging.getLogger("backupd.test").warning("run %d event %d", run, n)
            logs.close()
            events = [e for r in seen for e in json.loads(r.body)["Events"]]
            assert [e["MessageTemplate"] for e in events] == [
                f"run {run} event {n}" for n in range(5)
            ]
    finally:
        root.handlers[:], level = before
        root.setLevel(level)


def test_a_brace_in_a_message_reaches_seq_as_a_literal_brace(
    receiver: tuple[str, list[Received]],
) -> None:
    """Seq reads MessageTemplate as a template: a database named "{Database}" showed the
    event's Database property in its place."""
    url, seen = receiver
    config = LogConfig.model_validate({"SEQ_URL": url})
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        logs = setup_logging(config, [], io.StringIO())
        logging.getLogger("backupd.test").warning("backing up %s", "{Database} and {0}")
        logs.close()
    finally:
        root.handlers[:], level = before
        root.setLevel(level)

    (event,) = [e for r in seen for e in json.loads(r.body)["Events"]]
    assert event["MessageTemplate"] == "backing up {{Database}} and {{0}}"


@pytest.fixture
def stalled_seq() -> Iterator[tuple[str, threading.Event]]:
    """A slow Seq: each answer takes half a second, until the event is set."""
    answer = threading.Event()

    class Stalled(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer.wait(0.5)
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    with http_server(Stalled) as url:
        try:
            yield url, answer
        finally:
            answer.set()


def test_a_slow_seq_holds_a_bounded_backlog_and_the_console_says_once_what_was_dropped(
    stalled_seq: tuple[str, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, answer = stalled_seq
    monkeypatch.setattr(logs, "SEQ_BACKLOG", 50)
    console = io.StringIO()
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        opened = setup_logging(LogConfig.model_validate({"SEQ_URL": url}), [], console)
        assert opened.listener is not None
        records, (seq,) = opened.listener.queue, opened.listener.handlers
        assert isinstance(records, queue.Queue)
        for n in range(500):
            logging.getLogger("backupd.test").warning("event %d", n)
        with records.all_tasks_done:  # every record handed on to the Seq handler
            assert records.all_tasks_done.wait_for(lambda: not records.unfinished_tasks, 10)

        waiting = seq.log_queue.qsize()  # type: ignore[attr-defined]  # seqlog's, unbounded
        answer.set()
        opened.close()
    finally:
        root.handlers[:], level = before
        root.setLevel(level)

    assert waiting <= 50
    said = console.getvalue()
    assert said.count("Seq falls behind: with 50 log events waiting for it") == 1
    assert re.search(r"WARNING \d+ log events were not sent to Seq: it fell behind", said)


def test_webhook_and_dead_mans_switch(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str, receiver: tuple[str, list[Received]]
) -> None:
    url, seen = receiver
    check = uuid.uuid4().hex
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        "NOTIFY_WEBHOOK_URL": f"{url}/hook?token=hook-Secret-31",
        "HEALTHCHECK_PING_URL": f"{url}/ping/{check}?create=1",  # the event goes before "?"
    }

    assert run_backupd("once", env=env).returncode == 0
    assert run_backupd("once", env={**env, "DB_PASSWORD": "wrong"}).returncode == 1

    pings = [r.path for r in seen if r.path.startswith("/ping/")]
    assert pings == [
        f"/ping/{check}/start?create=1",
        f"/ping/{check}?create=1",
        f"/ping/{check}/start?create=1",
        f"/ping/{check}/fail?create=1",
    ]
    hooks = [json.loads(r.body) for r in seen if r.path.startswith("/hook")]
    assert [(h["result"], h["database"], h["target"]) for h in hooks] == [
        ("succeeded", shop, "default"),
        ("failed", shop, "default"),
    ]
    assert hooks[0]["key"].endswith(".dump") and hooks[0]["size"] > 0 and hooks[0]["error"] is None
    assert "password authentication failed" in hooks[1]["error"]


@pytest.mark.parametrize("refusal", ["request", "each key"])
def test_a_failed_prune_after_a_backup_is_mailed_and_posted(
    pg: PostgresServer,
    shop: str,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    smtp: tuple[int, Inbox],
    receiver: tuple[str, list[Received]],
    refusal: str,
) -> None:
    """The backup succeeds and its prune's deletes are refused: the whole request (403), or
    key by key in a 200 answer, as AWS S3 answers an identity without s3:DeleteObject. The
    run fails, and mail and the webhook say the prune failed (the ping, which watches
    backups, says success). Refused key by key, the prune passed as a success with warning
    lines, and neither was told: storage grew without anyone hearing of it."""
    port, inbox = smtp
    url, seen = receiver
    earlier = datetime.now(UTC) - timedelta(days=3)
    stored = [
        put_backup(s3, bucket, shop, earlier + timedelta(hours=hour), prefix="backups")
        for hour in range(3)
    ]
    if refusal == "request":
        proxy.access_denied = lambda method, target: method == "POST" and "?delete" in target
    else:
        proxy.refuse_each_delete = True
    check = uuid.uuid4().hex
    env = {
        **pg_env(pg, shop),
        **storage_env(proxy.url, bucket),
        **mail_env(port, EMAIL_ON="failure"),
        "NOTIFY_WEBHOOK_URL": f"{url}/hook",
        "HEALTHCHECK_PING_URL": f"{url}/ping/{check}",
        "RETENTION_KEEP_LAST": "2",
        "ANOMALY_GROWTH": "1000",  # 40-byte stand-ins before the real dump
    }

    result = run_backupd("once", env=env)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "pruning FAILED" in output
    assert "Traceback" not in output
    assert set(stored) <= {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    ((_, _, mail),) = inbox.messages  # EMAIL_ON=failure: the backup's success is not mailed
    assert mail["Subject"] == "[backupd] default: prune FAILED"
    text = mail.get_payload(decode=True).decode()
    assert f"Pruning target default (postgres, {shop}) after its backup FAILED" in text
    assert "AccessDenied" in text
    assert "backupd prune --target default" in text
    hooks = [json.loads(r.body) for r in seen if r.path.startswith("/hook")]
    assert [(h["kind"], h["result"], h["step"]) for h in hooks] == [
        ("backup", "succeeded", None),
        ("prune", "failed", "prune"),
    ]
    assert "AccessDenied" in hooks[1]["error"]
    assert [r.path for r in seen if r.path.startswith("/ping/")] == [
        f"/ping/{check}/start",
        f"/ping/{check}",
    ]
    if refusal == "each key":
        assert "the store refused to delete 2 key(s)" in hooks[1]["error"]


def test_a_dead_webhook_is_a_warning_only(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str
) -> None:
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        "NOTIFY_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook?token=hook-Secret-31",
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"webhook about {shop} failed" in result.stdout
    assert "hook-Secret-31" not in result.stdout + result.stderr


def test_a_refused_webhook_or_ping_never_prints_its_url_in_any_spelling(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str, receiver: tuple[str, list[Received]]
) -> None:
    """An HTTP client writes a URL normalised (host lower-cased, ``%7e`` as ``~``, a space as
    ``+``), which masking the URL as configured would miss: errors never carry the URL."""
    url, _ = receiver
    port = url.rsplit(":", 1)[1]
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        "NOTIFY_WEBHOOK_URL": f"http://LOCALHOST:{port}/missing/hook/HookToken77",
        "HEALTHCHECK_PING_URL": f"{url}/missing/ping/%7ePingToken55",
    }

    result = run_backupd("once", env=env)

    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    assert f"webhook about {shop} failed: HTTP 404 Not Found" in said
    assert "HookToken77" not in said and "PingToken55" not in said
    spaced = {**env, "NOTIFY_WEBHOOK_URL": f"{url}/missing/h?t=A HookToken77"}
    checked = run_backupd("check", "--send-test", env=spaced)
    assert "NOTIFY_WEBHOOK_URL: the test POST failed: HTTP 404" in checked.stdout
    assert "HookToken77" not in checked.stdout + checked.stderr


@pytest.mark.parametrize("status", [429, 408])
async def test_a_webhook_told_to_come_back_later_is_tried_again_after_the_wait_it_asks(
    status: int,
) -> None:
    """Chat services' webhooks take a few posts a second and answer the rest 429 with a
    ``Retry-After``: the report still arrives, that long after."""
    arrived: list[tuple[float, bytes]] = []

    class Busy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived.append((time.monotonic(), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(status if len(arrived) == 1 else 200)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    with http_server(Busy) as url:
        await webhook.request(f"{url}/hook", b'{"r": 1}')

    assert [body for _, body in arrived] == [b'{"r": 1}', b'{"r": 1}']
    assert arrived[1][0] - arrived[0][0] >= 1.9


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_a_webhook_redirected_to_a_get_is_a_failure_and_a_redirected_ping_arrives(
    receiver: tuple[str, list[Received]], status: int
) -> None:
    """A client repeats a POST redirected by 301, 302 or 303 as a GET without its body:
    followed, the report would be lost while the receiver said 200."""
    url, seen = receiver

    with pytest.raises(RuntimeError) as refused:
        await webhook.request(f"{url}/moved/{status}/hook?token=hook-Secret-31", b"{}")
    await webhook.ping(f"{url}/moved/{status}/ping/PingToken55", "fail")

    said = str(refused.value)
    assert said.startswith(f"HTTP {status} ")
    assert "redirects elsewhere" in said and "set the final URL" in said
    assert "hook-Secret-31" not in said and "/hook" not in said
    assert [(r.method, r.path.split("?")[0]) for r in seen] == [
        ("POST", f"/moved/{status}/hook"),  # once: a refusal is not retried
        ("GET", f"/moved/{status}/ping/PingToken55/fail"),
        ("GET", "/ping/PingToken55/fail"),
    ]


@pytest.mark.parametrize("status", [307, 308])
async def test_a_webhook_redirected_as_a_post_arrives_with_its_report(
    receiver: tuple[str, list[Received]], status: int
) -> None:
    """307 and 308 keep the method and the body (what an http:// to https:// redirect of
    Caddy or Traefik answers): the report arrives at the new place."""
    url, seen = receiver

    await webhook.request(f"{url}/moved/{status}/hook?token=hook-Secret-31", b'{"r": 1}')

    assert [(r.method, r.path.split("?")[0]) for r in seen] == [
        ("POST", f"/moved/{status}/hook"),
        ("POST", "/hook"),
    ]
    assert json.loads(seen[-1].body) == {"r": 1}


async def test_a_webhook_redirected_without_end_is_a_failure(
    receiver: tuple[str, list[Received]],
) -> None:
    url, seen = receiver

    with pytest.raises(RuntimeError) as refused:
        await webhook.request(f"{url}{'/moved/308' * 7}/hook?token=hook-Secret-31", b"{}")

    assert str(refused.value).startswith("HTTP 308 ")
    assert "redirects more than 5 times" in str(refused.value)
    assert len(seen) == 6 and "hook-Secret-31" not in str(refused.value)


def test_check_says_the_test_post_was_redirected(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str, receiver: tuple[str, list[Received]]
) -> None:
    url, seen = receiver
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        "NOTIFY_WEBHOOK_URL": f"{url}/moved/301/hook?token=hook-Secret-31",
    }

    checked = run_backupd("check", "--send-test", env=env)

    said = checked.stdout + checked.stderr
    assert "NOTIFY_WEBHOOK_URL: the test POST failed: HTTP 301 Moved Permanently" in said
    assert "set the final URL" in said and "hook-Secret-31" not in said
    assert [r.method for r in seen] == ["POST"]


def test_json_logs_carry_the_report_fields(
    pg: PostgresServer, shop: str, moto_url: str, bucket: str
) -> None:
    env = {**pg_env(pg, shop), **storage_env(moto_url, bucket), "LOG_FORMAT": "json"}

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    (done,) = [line for line in lines if line.get("Result") == "succeeded"]
    assert done["level"] == "INFO"
    assert done["Database"] == shop
    assert done["Bytes"] > 0


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_no_secret_in_any_mail_event_webhook_or_log_line(
    pg: PostgresServer,
    shop: str,
    moto_url: str,
    bucket: str,
    smtp: tuple[int, Inbox],
    receiver: tuple[str, list[Received]],
    outcome: str,
) -> None:
    port, inbox = smtp
    url, seen = receiver
    env = {
        **pg_env(pg, shop),
        **storage_env(moto_url, bucket),
        **mail_env(port),
        "SEQ_URL": url,
        "SEQ_API_KEY": SEQ_KEY,
        "NOTIFY_WEBHOOK_URL": f"{url}/hook?token=hook-Secret-31",
        "LOG_LEVEL": "DEBUG",
    }
    if outcome == "failure":
        env["DB_DATABASE"] = f"missing {pg.password}"  # a secret smuggled into an error message

    result = run_backupd("once", env=env)

    assert (result.returncode == 0) == (outcome == "success"), result.stdout + result.stderr
    assert inbox.raw and seen
    everything = {
        "mail": b"".join(inbox.raw).decode(errors="replace"),
        "seq and webhooks": b"".join(r.body for r in seen).decode(errors="replace"),
        "logs": result.stdout + result.stderr,
    }
    for where, text in everything.items():
        for secret in (pg.password, S3_SECRET, SMTP_PASSWORD, SEQ_KEY, "hook-Secret-31"):
            assert secret not in text, f"{secret!r} in {where}"


def test_a_shrunken_backup_warns_with_both_figures_and_verify_mails_its_result(
    pg: PostgresServer,
    moto_url: str,
    bucket: str,
    smtp: tuple[int, Inbox],
    receiver: tuple[str, list[Received]],
) -> None:
    port, inbox = smtp
    url, seen = receiver
    name = f"shrink_{uuid.uuid4().hex[:8]}"
    pg.create_database(
        name, "CREATE TABLE t AS SELECT g, md5(g::text) AS m FROM generate_series(1, 20000) g;"
    )
    env = {
        **pg_env(pg, name),
        **storage_env(moto_url, bucket),
        **mail_env(port),
        "NOTIFY_WEBHOOK_URL": f"{url}/hook",
    }
    for _ in range(3):
        assert run_backupd("once", env=env).returncode == 0
    pg.psql("DELETE FROM t WHERE g > 500", name)

    shrunk = run_backupd("once", env=env)
    verified = run_backupd("verify", env=env)

    assert shrunk.returncode == 0, shrunk.stdout + shrunk.stderr
    assert "looks anomalous: size shrank to" in shrunk.stdout
    assert "total rows shrank to 500 rows, 0.03x the median of 20,000 rows" in shrunk.stdout
    subjects = [" ".join(str(message["Subject"]).split()) for _, _, message in inbox.messages]
    assert subjects[:3] == [f"[backupd] default: backup of {name} succeeded"] * 3
    assert subjects[3] == f"[backupd] default: backup of {name} looks ANOMALOUS"
    warning = inbox.messages[3][2].get_payload(decode=True).decode()
    assert "total rows shrank to 500 rows" in warning and "median of 20,000 rows" in warning
    hooks = [json.loads(r.body) for r in seen if r.path.startswith("/hook")]
    assert [h["result"] for h in hooks[:4]] == ["succeeded"] * 3 + ["anomaly"]
    assert "size shrank" in hooks[3]["note"]
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert subjects[4:] == [f"[backupd] default: {name} verified"]
    assert hooks[-1]["kind"] == "verify" and hooks[-1]["result"] == "succeeded"
