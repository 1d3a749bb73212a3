"""Console log lines: one line per record, whatever a name holds; secrets masked."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import queue
from collections.abc import Iterator

import pytest

from backupd.config import LogConfig
from backupd.logs import Logging, escape_controls, setup_logging

FORGED = "line1\nBcc: evil@example.com"


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """What backupd's text logging writes, with the root logger restored afterwards."""
    root = logging.getLogger()
    before = root.handlers[:], root.level
    stream = io.StringIO()
    logs = setup_logging(LogConfig.model_validate({"LOG_LEVEL": "DEBUG"}), ["pa\nss"], stream)
    try:
        yield stream
    finally:
        logs.close()
        root.handlers[:], level = before
        root.setLevel(level)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain ü 名前 \\ name", "plain ü 名前 \\ name"),
        (FORGED, "line1\\nBcc: evil@example.com"),
        ("a\r\n2026-01-01T00:00:00+00:00 INFO    x", "a\\r\\n2026-01-01T00:00:00+00:00 INFO    x"),
        ("tab\tesc\x1b[31mdel\x7fnel\x85sep\u2028", "tab\\tesc\\x1b[31mdel\\x7fnel\\x85sep\\u2028"),
    ],
)
def test_control_characters_are_shown_escaped(text: str, shown: str) -> None:
    assert escape_controls(text) == shown


def test_a_name_with_a_line_break_cannot_forge_a_log_line(console: io.StringIO) -> None:
    logging.getLogger("backupd.test").error("backup of default %s FAILED at dump", FORGED)

    (line,) = console.getvalue().splitlines()
    assert line.endswith("ERROR   backup of default line1\\nBcc: evil@example.com FAILED at dump")


def test_a_secret_with_a_line_break_is_masked_before_it_is_escaped(console: io.StringIO) -> None:
    logging.getLogger("backupd.test").warning("password pa\nss refused")

    (line,) = console.getvalue().splitlines()
    assert line.endswith("WARNING password ****** refused")


def test_a_traceback_at_debug_keeps_its_lines(console: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("backupd.test").debug("details of %s", FORGED, exc_info=True)

    first, *rest = console.getvalue().splitlines()
    assert first.endswith("DEBUG   details of line1\\nBcc: evil@example.com")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"


@pytest.mark.parametrize("secret", ['pg "s3cr3t" p@ss\\word #1', "tab\tin it", "line\nbreak"])
def test_a_json_line_masks_a_secret_that_json_writes_escaped(secret: str) -> None:
    """A dump tool's stderr (logged at DEBUG) or an error quoting the secret: JSON writes its
    quotes, backslashes and control characters escaped, so it must be masked before."""
    root = logging.getLogger()
    before = root.handlers[:], root.level
    stream = io.StringIO()
    config = LogConfig.model_validate({"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"})
    logs = setup_logging(config, [secret], stream)
    try:
        logging.getLogger("backupd.process").debug("pg_dump: could not log in with %s", secret)
        try:
            raise RuntimeError(f"refused {secret}")
        except RuntimeError:
            logging.getLogger("backupd.test").debug("details", exc_info=True)
    finally:
        logs.close()
        root.handlers[:], level = before
        root.setLevel(level)

    output = stream.getvalue()
    assert json.dumps(secret)[1:-1] not in output
    assert secret not in output
    assert [json.loads(line)["message"] for line in output.splitlines()] == [
        "pg_dump: could not log in with ******",
        "details",
    ]


def test_a_seq_handler_that_fails_at_the_end_is_a_warning_not_a_traceback() -> None:
    """The last batch is posted by ``close``: an error requests does not wrap (urllib3's
    LocationParseError) escaped the command after its work was done."""

    class Failing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            pass

        def flush(self) -> None:
            raise ValueError("Failed to parse: 'seq..local', label empty or too long")

    stream = io.StringIO()
    console = logging.StreamHandler(stream)
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    listener = logging.handlers.QueueListener(records, Failing())
    listener.start()

    Logging(listener, None, console).close()

    assert "cannot send logs to Seq" in stream.getvalue()
    assert "label empty or too long" in stream.getvalue()
