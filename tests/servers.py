"""Real servers for the integration tests: PostgreSQL, MariaDB, moto's S3, and a fault proxy.

Each starts in a temporary directory on a free loopback port, with password authentication,
and stops when its fixture ends. Nothing here depends on services already running on the host.
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from backupd.catalogue import MANIFEST_SUFFIX

PG_PASSWORD = 'pg "s3cr3t" p@ss\\word #1'
MARIADB_PASSWORD = 'my "s3cr3t" p@ss\\word #2'
OTHER_LOOPBACK = "127.0.0.2"
"""A TLS server listens here too: an address its certificate does not name (Linux routes all
of 127.0.0.0/8 to the loopback interface)."""
CERTIFIED_USER = "certified"
"""On a TLS server: the login that also needs a client certificate (its CN, for PostgreSQL)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass(frozen=True)
class TLSFiles:
    """A certificate authority and a certificate it signed, with its key (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
"""P-256 keys: made in milliseconds, where RSA keys take a noticeable while."""


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA in ``folder``: (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subject = f"/CN={name}"
    _openssl("req", "-x509", *EC_KEY, "-keyout", str(key), "-out", str(cert), "-subj", subject)
    return cert, key


def issue(ca: tuple[Path, Path], folder: Path, name: str, subject: str, san: str) -> TLSFiles:
    """A certificate for ``subject`` (a CN) with ``san`` (``IP:127.0.0.1,DNS:localhost``, or
    empty for none), signed by ``ca``, and its key, in ``folder``; valid for two days."""
    cert, key, request = (folder / f"{name}{end}" for end in (".pem", ".key", ".csr"))
    extensions = folder / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    new = ["-keyout", str(key), "-out", str(request), "-subj", f"/CN={subject}"]
    _openssl("req", "-new", *EC_KEY, *new)
    serial = str(int.from_bytes(os.urandom(8), "big"))
    signing = ["-CA", str(ca[0]), "-CAkey", str(ca[1]), "-set_serial", serial, "-days", "2"]
    _openssl(
        "x509",
        "-req",
        "-in",
        str(request),
        *signing,
        "-extfile",
        str(extensions),
        "-out",
        str(cert),
    )
    return TLSFiles(ca[0], cert, key)


def _as_user(user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--"] if user else []


def _pg_bindir() -> Path:
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates = sorted(
        versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
    )
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb) not found; run .ci/run to install them"
        )
    return Path(initdb).resolve().parent


@dataclass
class PostgresServer:
    root: Path
    port: int = field(default_factory=free_port)
    user: str = "backupd"
    password: str = PG_PASSWORD
    os_user: str | None = None
    tls: TLSFiles | None = None
    """Set: the server accepts TLS connections only (``hostnossl ... reject``), and the role
    ``CERTIFIED_USER`` logs in only with a client certificate naming it."""

    def start(self) -> None:
        bindir = _pg_bindir()
        self.os_user = "postgres" if os.geteuid() == 0 else None
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            for path in (self.root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        subprocess.run(
            [
                *_as_user(self.os_user),
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            check=True,
            capture_output=True,
        )
        listen = "127.0.0.1" if self.tls is None else f"127.0.0.1,{OTHER_LOOPBACK}"
        options = f"-p {self.port} -k {self.root} -c listen_addresses={listen} -c fsync=off"
        if self.tls is not None:
            options += self._tls_options(self.tls)
        subprocess.run(
            [
                *_as_user(self.os_user),
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(self.root / "log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )

        if self.tls is not None:
            escaped = self.password.replace("'", "''")
            self.psql(f"CREATE ROLE {CERTIFIED_USER} LOGIN PASSWORD '{escaped}' SUPERUSER")

    def _tls_options(self, tls: TLSFiles) -> str:
        """The server's copies of ``tls`` (its key owned by the server's user, mode 0600, as
        PostgreSQL demands) and an hba file that refuses every connection without TLS."""
        folder = self.root / "tls"
        folder.mkdir()
        for source in (tls.ca, tls.cert, tls.key):
            shutil.copy(source, folder / source.name)
        (folder / tls.key.name).chmod(0o600)
        hba = folder / "pg_hba.conf"
        hba.write_text(
            "local all all scram-sha-256\n"
            f"hostssl all {CERTIFIED_USER} 127.0.0.0/8 scram-sha-256 clientcert=verify-full\n"
            "hostssl all all 127.0.0.0/8 scram-sha-256\n"
            "hostnossl all all all reject\n"
        )
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            for path in (folder, *folder.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        return (
            f" -c ssl=on -c ssl_ca_file={folder / tls.ca.name}"
            f" -c ssl_cert_file={folder / tls.cert.name}"
            f" -c ssl_key_file={folder / tls.key.name} -c hba_file={hba}"
        )

    def stop(self) -> None:
        bindir = _pg_bindir()
        subprocess.run(
            [
                *_as_user(self.os_user),
                str(bindir / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )

    def env(self, database: str = "postgres") -> dict[str, str]:
        tls = (
            {} if self.tls is None else {"PGSSLMODE": "require", "PGSSLROOTCERT": str(self.tls.ca)}
        )
        return {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": database,
            **tls,
        }

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
            env={**os.environ, **self.env(database)},
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout

    def run_sql_file(self, sql: str, database: str) -> None:
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"],
            input=sql,
            text=True,
            env={**os.environ, **self.env(database)},
            check=True,
            capture_output=True,
        )

    def create_database(self, name: str, sql: str = "") -> None:
        self.psql(f'CREATE DATABASE "{name}"')
        if sql:
            self.run_sql_file(sql, name)

    def plain_dump(self, database: str) -> str:
        """The database as plain SQL: equal text means equal schema, code and rows."""
        result = subprocess.run(
            ["pg_dump", "--format=plain", "--no-owner"],
            env={**os.environ, **self.env(database)},
            check=True,
            capture_output=True,
            text=True,
        )
        # pg_dump 15.14+ fences the script with a random \restrict key: not part of the data.
        return "\n".join(
            line
            for line in result.stdout.splitlines()
            if not line.startswith(("\\restrict", "\\unrestrict"))
        )

    def restore(self, dump: bytes, database: str) -> None:
        self.create_database(database)
        subprocess.run(
            ["pg_restore", "--no-owner", "--exit-on-error", "-d", database],
            input=dump,
            env={**os.environ, **self.env(database)},
            check=True,
            capture_output=True,
        )


@dataclass
class MariaDBServer:
    root: Path
    port: int = field(default_factory=free_port)
    user: str = "backupd"
    password: str = MARIADB_PASSWORD
    process: subprocess.Popen[bytes] | None = None
    tls: TLSFiles | None = None
    """Set: the server accepts TLS connections only (``require_secure_transport``), its users
    are created ``REQUIRE SSL``, and ``CERTIFIED_USER`` ``REQUIRE X509`` (a client certificate
    signed by the CA)."""

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    def start(self) -> None:
        os_user = "mysql" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(os_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        listen = "127.0.0.1" if self.tls is None else f"127.0.0.1,{OTHER_LOOPBACK}"
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                f"--user={os_user}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        self.process = subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                f"--bind-address={listen}",
                f"--user={os_user}",
                f"--pid-file={self.root / 'pid'}",
                "--innodb-flush-log-at-trx-commit=0",
                "--max-allowed-packet=64M",
                "--skip-name-resolve",
                f"--log-error={self.root / 'log'}",
                *self._tls_options(os_user),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._ready, 60, "MariaDB to accept connections")
        escaped = self.password.replace("\\", "\\\\").replace("'", "\\'")
        users = [(self.user, "")]
        if self.tls is not None:
            users = [(self.user, " REQUIRE SSL"), (CERTIFIED_USER, " REQUIRE X509")]
        for user, requirement in users:
            self.root_sql(
                f"CREATE USER '{user}'@'%' IDENTIFIED BY '{escaped}'{requirement};"
                f"GRANT ALL ON *.* TO '{user}'@'%' WITH GRANT OPTION;"
            )

    def _tls_options(self, os_user: str) -> list[str]:
        """The server's copies of ``tls``, readable by ``os_user``, as mariadbd options, with
        every connection but the local socket's required to use TLS."""
        if self.tls is None:
            return []
        folder = self.root / "tls"
        folder.mkdir()
        entry = pwd.getpwnam(os_user)
        copies = []
        for source in (self.tls.ca, self.tls.cert, self.tls.key):
            copies.append(Path(shutil.copy(source, folder / source.name)))
            os.chown(copies[-1], entry.pw_uid, entry.pw_gid)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        ca, cert, key = copies
        return [
            f"--ssl-ca={ca}",
            f"--ssl-cert={cert}",
            f"--ssl-key={key}",
            "--require-secure-transport=ON",
        ]

    def _ready(self) -> bool:
        probe = subprocess.run(
            ["mariadb", f"--socket={self.socket}", "-uroot", "-e", "SELECT 1"], capture_output=True
        )
        return probe.returncode == 0

    def root_sql(self, sql: str, database: str = "") -> str:
        result = subprocess.run(
            [
                "mariadb",
                f"--socket={self.socket}",
                "-uroot",
                "--default-character-set=utf8mb4",
                "--comments",  # kept in routine bodies, as users' own clients may keep them
                "--batch",
                "--skip-column-names",
                *([database] if database else []),
            ],
            input=sql,
            text=True,
            check=True,
            capture_output=True,
        )
        return result.stdout

    def create_database(self, name: str, sql: str = "") -> None:
        self.root_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        if sql:
            self.root_sql(sql, name)

    def plain_dump(self, database: str) -> str:
        """The database as SQL without its name: equal text means equal schema, code and rows."""
        result = subprocess.run(
            [
                "mariadb-dump",
                f"--socket={self.socket}",
                "-uroot",
                "--skip-dump-date",
                "--routines",
                "--events",
                "--triggers",
                "--hex-blob",
                "--default-character-set=utf8mb4",
                database,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        # Comments name the database; everything else must match.
        return "\n".join(line for line in result.stdout.splitlines() if not line.startswith("--"))

    def dump_with_databases(self, database: str) -> bytes:
        """A dump as backupd made them before manifest format 2: ``--databases``, so the SQL
        names the database in CREATE DATABASE and USE statements."""
        return subprocess.run(
            [
                "mariadb-dump",
                f"--socket={self.socket}",
                "-uroot",
                "--single-transaction",
                "--quick",
                "--routines",
                "--events",
                "--triggers",
                "--hex-blob",
                "--default-character-set=utf8mb4",
                "--databases",
                database,
            ],
            check=True,
            capture_output=True,
        ).stdout

    def restore(self, dump: bytes, database: str) -> None:
        """Load a backupd dump with the stock client: its SQL names no database, so it loads
        into whichever one the client is given, unchanged."""
        self.create_database(database)
        subprocess.run(
            [
                "mariadb",
                f"--socket={self.socket}",
                "-uroot",
                "--default-character-set=utf8mb4",
                "--binary-mode",
                "--max-allowed-packet=1G",
                database,
            ],
            input=dump,
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _error_answer(status: str, code: str) -> bytes:
    """A complete S3 error response that closes its connection."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        "<Message>answered by the test proxy</Message></Error>"
    ).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _keys_refused(request_body: bytes) -> bytes:
    """A DeleteObjects answer that deletes nothing: 200, and an AccessDenied ``Error`` for each
    key of the request, as AWS S3 answers an identity without s3:DeleteObject."""
    keys = re.findall(rb"<Key>(.*?)</Key>", request_body)
    errors = b"".join(
        b"<Error><Key>%s</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        % key
        for key in keys
    )
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">%s</DeleteResult>' % errors
    )
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


ACCESS_DENIED = _error_answer("403 Forbidden", "AccessDenied")
PRECONDITION_FAILED = _error_answer("412 Precondition Failed", "PreconditionFailed")


Match = Callable[[str, str], bool]
"""Picks requests by method and target (path and query)."""
HOLD_LIMIT = 60.0
"""Seconds a held request waits for ``FaultProxy.release`` at most."""
ANSWER_WAIT = 10.0
"""Seconds the proxy waits for the answer it is to lose."""


class FaultProxy:
    """A TCP proxy in front of an HTTP server.

    It records each request's method, target and body size and, once ``break_uploads`` is set,
    drops any connection that sends a multipart UploadPart. Headers named in ``strip_headers``
    (lower case) are removed from every request, like a store that ignores them.

    ``lose_answers`` and ``hold`` pick requests by method and target. Either goes upstream
    whole and is acted on; a lost answer never reaches the client (the connection is closed
    once the server has answered, as when a network drops a response), a held one reaches it
    only once ``release`` is set: the client waits on a write that has already landed.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[tuple[str, str, int]] = []
        self.arrivals: list[tuple[float, str, str]] = []
        """``(time.monotonic(), method, target)`` of each request as it arrived."""
        self.break_uploads = threading.Event()
        self.part_delay = 0.0
        self.manifest_delay = 0.0
        """Seconds each GET of a manifest is held before it goes upstream."""
        self.strip_headers: set[str] = set()
        self.refuse_puts_ending: str | None = None
        """PUTs of keys ending so are answered 403 AccessDenied, without reaching upstream."""
        self.refuse_gets_ending: str | None = None
        """GETs of keys ending so are answered 403 AccessDenied, without reaching upstream."""
        self.deletes_allowed: int | None = None
        """Once this many DeleteObjects requests went through, the next are cut off."""
        self._deletes = 0
        self.lose_answers: Match = lambda method, target: False
        self.lost: list[tuple[str, str]] = []
        """``(method, target)`` of each request whose answer was lost."""
        self.hold: Match = lambda method, target: False
        self.cut_answers: Match = lambda method, target: False
        """Requests picked get only the first ``cut_after`` bytes of their answer, then the
        connection closes: a download cut short mid-body."""
        self.cut_after = 0
        self.precondition_failed: Match = lambda method, target: False
        """Requests picked are answered 412 PreconditionFailed, without reaching upstream."""
        self.access_denied: Match = lambda method, target: False
        """Requests picked are answered 403 AccessDenied, without reaching upstream."""
        self.refuse_each_delete = False
        """DeleteObjects requests are answered 200 with an AccessDenied error for every key,
        without reaching upstream."""
        self.holding = threading.Event()
        """Set once the server has answered a request picked by ``hold``."""
        self.release = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def part_sizes(self) -> list[int]:
        """Sizes of the UploadPart bodies, in part-number order (they may arrive out of order)."""
        parts = {}
        for method, target, size in self.requests:
            query = parse_qs(urlsplit(target).query)
            if method == "PUT" and "partNumber" in query:
                parts[int(query["partNumber"][0])] = size
        return [parts[number] for number in sorted(parts)]

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        answers = _Answers()
        threading.Thread(target=self._pump, args=(upstream, client, answers), daemon=True).start()
        buffer = b""
        try:
            while (request := self._read_head(client, buffer)) is not None:
                head, method, target, length, buffer = request
                self.requests.append((method, target, length))
                self.arrivals.append((time.monotonic(), method, target))
                if self.refuse_each_delete and method == "POST" and "?delete" in target:
                    body, buffer = self._read_body(client, length, buffer)
                    client.sendall(_keys_refused(body))
                    return
                if not self._allow(client, method, target):
                    return
                answers.lose = self.lose_answers(method, target)
                answers.hold = self.hold(method, target)
                answers.cut = self.cut_answers(method, target)
                upstream.sendall(self._strip(head))
                buffer = self._forward_body(client, upstream, length, buffer)
                if answers.lose:
                    answers.came.wait(ANSWER_WAIT)
                    self.lost.append((method, target))
                    return
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                # shutdown first: close alone does not end a connection another thread is
                # still reading (the pump), and the server would wait for the body forever
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _allow(self, client: socket.socket, method: str, target: str) -> bool:
        """Delay, hold or refuse a request as configured; False when it goes no further."""
        is_part = method == "PUT" and "partNumber=" in target
        if is_part and self.break_uploads.is_set():
            client.shutdown(socket.SHUT_RDWR)
            return False
        if method == "POST" and "?delete" in target and self.deletes_allowed is not None:
            self._deletes += 1
            if self._deletes > self.deletes_allowed:
                client.shutdown(socket.SHUT_RDWR)
                return False
        if is_part and self.part_delay:
            time.sleep(self.part_delay)
        path = target.split("?", 1)[0]
        if method == "GET" and self.manifest_delay and path.endswith(MANIFEST_SUFFIX):
            time.sleep(self.manifest_delay)
        refused = {"PUT": self.refuse_puts_ending, "GET": self.refuse_gets_ending}
        ending = refused.get(method)
        answer = ACCESS_DENIED if ending and path.endswith(ending) else None
        if self.access_denied(method, target):
            answer = ACCESS_DENIED
        if self.precondition_failed(method, target):
            answer = PRECONDITION_FAILED
        if answer is not None:
            # Answered before the body (the client may be waiting for 100 Continue),
            # and the connection closed, so no body is left to misread as a request.
            client.sendall(answer)
            return False
        return True

    def _strip(self, head: bytes) -> bytes:
        if not self.strip_headers:
            return head
        lines = head.split(b"\r\n")
        kept = [
            line
            for line in lines
            if line.partition(b":")[0].strip().lower().decode() not in self.strip_headers
        ]
        return b"\r\n".join(kept)

    @staticmethod
    def _read_head(
        client: socket.socket, buffer: bytes
    ) -> tuple[bytes, str, str, int, bytes] | None:
        """The next request's head, method, target and Content-Length, plus what follows it."""
        while b"\r\n\r\n" not in buffer:
            data = client.recv(65536)
            if not data:
                return None
            buffer += data
        head, rest = buffer.split(b"\r\n\r\n", 1)
        method, target = head.split(b"\r\n", 1)[0].decode().split(" ")[:2]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        return head + b"\r\n\r\n", method, target, length, rest

    @staticmethod
    def _read_body(client: socket.socket, length: int, buffer: bytes) -> tuple[bytes, bytes]:
        """The request's ``length`` body bytes, and what was read beyond them."""
        while len(buffer) < length:
            data = client.recv(65536)
            if not data:
                raise ConnectionResetError("client went away mid-body")
            buffer += data
        return buffer[:length], buffer[length:]

    @staticmethod
    def _forward_body(
        client: socket.socket, upstream: socket.socket, length: int, buffer: bytes
    ) -> bytes:
        """Send ``length`` body bytes upstream; return what was read beyond them."""
        while length > 0:
            if not buffer:
                buffer = client.recv(min(length, 1 << 20))
                if not buffer:
                    raise ConnectionResetError("client went away mid-body")
            chunk, buffer = buffer[:length], buffer[length:]
            upstream.sendall(chunk)
            length -= len(chunk)
        return buffer

    def _pump(
        self, source: socket.socket, sink: socket.socket, answers: _Answers | None = None
    ) -> None:
        """Copy the server's answers to the client, losing or holding them as ``answers`` says."""
        sent = 0
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if answers is not None and answers.cut:
                    data = data[: max(self.cut_after - sent, 0)]
                    sent += len(data)
                    if not data:
                        sink.shutdown(socket.SHUT_RDWR)
                        return
                if answers is not None and (answers.lose or answers.hold):
                    data = self._pass_interim(data, sink)
                    if not data:
                        continue
                    answers.came.set()
                    if answers.lose:
                        continue
                    self.holding.set()
                    self.release.wait(HOLD_LIMIT)
                    answers.hold = False
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    @staticmethod
    def _pass_interim(data: bytes, sink: socket.socket) -> bytes:
        """Send a leading ``100 Continue`` on (the client may wait for it to send the body);
        return what follows it."""
        if not data.startswith(b"HTTP/1.1 100 "):
            return data
        interim, _, rest = data.partition(b"\r\n\r\n")
        sink.sendall(interim + b"\r\n\r\n")
        return rest


@dataclass
class _Answers:
    """What becomes of the server's answer to the request in flight on one connection."""

    lose: bool = False
    hold: bool = False
    cut: bool = False
    came: threading.Event = field(default_factory=threading.Event)
    """Set once the server answered a request whose answer is lost or held."""


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    """moto's S3 as a real HTTP server on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class _OneWriteAtATime:
    """WSGI middleware: write requests one at a time.

    AWS S3 applies a conditional write atomically; moto checks the condition and then writes,
    unlocked, so two concurrent ``If-None-Match: *`` writes can both succeed. Serialising the
    writes gives moto S3's semantics for tests of what relies on them.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") in {"GET", "HEAD"}:
            return self.app(environ, start_response)
        # The body is read before the lock is taken: a client that dies mid-body stalls only
        # its own request, never every write after it.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(length) if length else b"")
        with self.lock:
            return list(self.app(environ, start_response))


@contextlib.contextmanager
def atomic_moto_endpoint() -> Iterator[str]:
    """moto's S3 with atomic conditional writes, sharing the buckets of ``moto_endpoint``'s."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = _OneWriteAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung server or balancer)."""
    held: list[socket.socket] = []
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    held.append(listener.accept()[0])

        taker = threading.Thread(target=accept, daemon=True)
        taker.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            taker.join()
            for connection in held:
                connection.close()


@dataclass
class Received:
    """One request a recording server got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def line(self) -> str:
        """``"POST /hook"``."""
        return f"{self.method} {self.path}"


@contextlib.contextmanager
def recording_server(answer_after: float = 0.0) -> Iterator[tuple[str, list[Received]]]:
    """A loopback HTTP server recording each GET and POST as it arrives and answering it 200
    ``answer_after`` seconds later (a webhook or ping service, slow when asked): its base URL
    and the requests so far."""
    seen: list[Received] = []

    class Recorder(BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append(Received(self.command, self.path, dict(self.headers), body))
            time.sleep(answer_after)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _record

        def log_message(self, *args: Any) -> None:
            return None

    with http_server(Recorder) as url:
        yield url, seen


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` answering on a free loopback port, from threads: its base URL. The
    server is shut down at the end, whatever the block raised."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
