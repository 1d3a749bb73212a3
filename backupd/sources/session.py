"""A long-lived SQL client session (psql, mariadb) driven over its stdin and stdout.

Row counts must be taken while a transaction stays open beside the dump: in PostgreSQL the
session exports the snapshot pg_dump then shares; in MySQL/MariaDB it holds a consistent
snapshot taken just before the dump's. ``ask`` sends statements followed by a marker query and
returns the lines printed before the marker; a client that stops (a failed statement makes it
exit) raises QueryError with the last lines of its stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from backupd.errors import QueryError
from backupd.process import Child, Command, spawn

LINE_LIMIT = 256 * 1024 * 1024
"""A table list as one JSON line can be long; it is never kept beyond one answer."""


class ClientSession:
    def __init__(self, child: Child, lines: asyncio.StreamReader) -> None:
        self._child = child
        self._lines = lines

    async def ask(self, statements: str) -> list[str]:
        """Run ``statements``; return the lines they printed."""
        marker = f"backupd-{secrets.token_hex(8)}"
        try:
            self._child.stdin.write(f"{statements}\nSELECT '{marker}';\n".encode())
            await self._child.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client has stopped (a failed login): its stderr says why, below
        answer: list[str] = []
        while True:
            line = await self._lines.readline()
            if not line:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await self._child.wait()  # for the whole of its stderr
                raise QueryError(
                    f"{self._child.name} stopped: {self._child.stderr_text() or 'no output'}"
                )
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text == marker:
                return answer
            answer.append(text)


@contextlib.asynccontextmanager
async def client_session(name: str, command: Command) -> AsyncIterator[ClientSession]:
    """Start ``command`` (a SQL client reading statements on stdin); kill it when the block
    ends, which also ends any transaction still open in it."""
    async with spawn(name, command, stdin=asyncio.subprocess.PIPE) as child:
        loop = asyncio.get_running_loop()
        lines = asyncio.StreamReader(limit=LINE_LIMIT)
        pipe = os.fdopen(os.dup(child.stdout.fd), "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(lines), pipe
        )
        try:
            yield ClientSession(child, lines)
        finally:
            transport.close()


@dataclass
class DumpSession:
    """What a dump runs beside: the snapshot it shares (PostgreSQL) and its table count.

    ``count`` returns ``{"schema", "name", "rows"}`` per table, counted as ``method`` says
    (see ``Manifest.row_counts``).
    """

    snapshot: str | None = None
    method: str | None = None
    session: ClientSession | None = field(default=None, repr=False)
    query: str = ""

    async def count(self) -> list[dict[str, Any]] | None:
        """The tables and their rows; None when this dump records none."""
        if self.session is None:
            return None
        return parse_counts(await self.session.ask(self.query))


def parse_counts(lines: list[str]) -> list[dict[str, Any]]:
    """``schema<TAB>name<TAB>rows`` lines, names hex-encoded (so that any character survives
    the client's output) → ``[{"schema", "name", "rows"}]``, sorted. Raise QueryError on a
    line of another shape."""
    tables = []
    for line in lines:
        if not line.strip():
            continue
        try:
            schema, name, rows = line.split("\t")
            tables.append(
                {
                    "schema": bytes.fromhex(schema).decode() if schema else None,
                    "name": bytes.fromhex(name).decode(),
                    "rows": int(rows),
                }
            )
        except ValueError:
            raise QueryError(f"unexpected row count line {line[:200]!r}") from None
    return sorted(tables, key=lambda t: (t["schema"] or "", t["name"]))


@contextlib.asynccontextmanager
async def no_session() -> AsyncIterator[DumpSession]:
    yield DumpSession()
