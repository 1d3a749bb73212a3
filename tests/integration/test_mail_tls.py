"""Mail against real SMTP servers (aiosmtpd): a plain relay, STARTTLS and implicit TLS with a
certificate made for the test, with and without AUTH; `check` speaks to each as a run would."""

from __future__ import annotations

import email
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import pg_env, run_backupd
from tests.servers import PostgresServer, free_port

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

USER, PASSWORD = "mailer", "smtp-Secret-6161"


@dataclass
class Inbox:
    messages: list[Message] = field(default_factory=list)
    logins: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        self.logins += ok
        return AuthResult(success=ok)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Relay:
    port: int
    inbox: Inbox
    env: dict[str, str]
    """What backupd needs to trust the relay's certificate."""


@pytest.fixture
def relay(certificate: tuple[Path, Path]) -> Iterator[Any]:
    """Start relays on demand: relay(tls="none"|"starttls"|"ssl", auth=bool) -> Relay."""
    controllers: list[Controller] = []
    cert, key = certificate

    def start(tls: str = "none", auth: bool = False) -> Relay:
        inbox = Inbox()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        options: dict[str, Any] = {}
        if tls == "starttls":
            options = {"tls_context": context, "require_starttls": True}
        elif tls == "ssl":
            options = {"ssl_context": context}
        if auth:
            options |= {
                "authenticator": inbox.authenticate,
                "auth_required": True,
                # aiosmtpd sees STARTTLS, not implicit TLS, as "TLS" here
                "auth_require_tls": tls == "starttls",
            }
        port = free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return Relay(port, inbox, {"SSL_CERT_FILE": str(cert)})

    yield start
    for controller in controllers:
        controller.stop()


def mail_env(pg: PostgresServer, tmp_path: Path, relay: Relay, **extra: str) -> dict[str, str]:
    return {
        **pg_env(pg, "postgres"),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "store"),
        "EMAIL_SMTP": "127.0.0.1",
        "EMAIL_PORT": str(relay.port),
        "EMAIL_FROM": "backupd@example.com",
        "EMAIL_TO": "ops@example.com",
        **relay.env,
        **extra,
    }


CREDENTIALS = {"EMAIL_USER": USER, "EMAIL_PASSWORD": PASSWORD}


def mail_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert PASSWORD not in output
    (line,) = [line for line in result.stdout.splitlines() if " default mail: " in line]
    return line


def test_a_plain_relay_without_credentials_gets_mail(
    pg: PostgresServer, tmp_path: Path, relay: Any
) -> None:
    plain = relay("none")

    result = run_backupd("once", env=mail_env(pg, tmp_path, plain))

    assert result.returncode == 0, result.stdout + result.stderr
    (message,) = plain.inbox.messages
    assert message["Subject"] == "[backupd] default: backup of postgres succeeded"
    assert message["Date"] is not None
    assert email.utils.parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@example.com>")


# (relay's TLS, relay demands AUTH, settings, exit code of check, the mail line holds)
CONVERSATIONS = [
    ("none", False, {}, 0, "no TLS; nothing sent"),
    ("starttls", False, {}, 0, "STARTTLS; nothing sent"),
    ("starttls", True, CREDENTIALS, 0, f"STARTTLS, login as {USER}; nothing sent"),
    ("ssl", True, {**CREDENTIALS, "EMAIL_TLS": "ssl"}, 0, f"implicit TLS, login as {USER};"),
    ("none", True, {**CREDENTIALS, "EMAIL_TLS": "none"}, 0, f"no TLS, login as {USER};"),
    # a relay that cannot do what is configured; credentials are never sent in plain text
    ("none", True, CREDENTIALS, 1, "does not offer STARTTLS (demanded when credentials are sent)"),
    ("none", False, {"EMAIL_TLS": "starttls"}, 1, "does not offer STARTTLS (EMAIL_TLS=starttls)"),
    ("none", False, {"EMAIL_TLS": "ssl"}, 1, "implicit TLS failed (EMAIL_TLS=ssl)"),
]


def test_check_speaks_to_each_relay_as_configured_and_sends_nothing(
    pg: PostgresServer, tmp_path: Path, relay: Any
) -> None:
    servers = [relay(tls, auth) for tls, auth, *_ in CONVERSATIONS]

    def check(number: int) -> subprocess.CompletedProcess[str]:
        extra = CONVERSATIONS[number][2]
        (tmp_path / str(number)).mkdir()
        return run_backupd(
            "check", env=mail_env(pg, tmp_path / str(number), servers[number], **extra)
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, range(len(CONVERSATIONS))))

    for (tls, auth, extra, code, expected), server, result in zip(
        CONVERSATIONS, servers, results, strict=True
    ):
        case = (tls, auth, extra)
        assert result.returncode == code, (case, result.stdout + result.stderr)
        line = mail_line(result)
        verdict = "ok  " if code == 0 else "FAIL"
        assert line.startswith(f"{verdict} default mail: EMAIL_SMTP 127.0.0.1:{server.port}"), case
        assert expected in line, (case, line)
        assert server.inbox.messages == [], case
        assert server.inbox.logins == (1 if auth and code == 0 else 0), case


def test_send_test_sends_one_mail_over_starttls_with_login(
    pg: PostgresServer, tmp_path: Path, relay: Any
) -> None:
    server = relay("starttls", auth=True)

    result = run_backupd("check", "--send-test", env=mail_env(pg, tmp_path, server, **CREDENTIALS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "STARTTLS, login as mailer, sent to 1 recipient(s)" in mail_line(result)
    (message,) = server.inbox.messages
    assert message["Subject"] == "[backupd] default: test mail"
    assert message["Date"] is not None and message["Message-ID"] is not None
