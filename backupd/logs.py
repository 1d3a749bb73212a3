"""Logging setup, called once by the CLI: stdout always (text or JSON), Seq when configured.

Every line passes a masking formatter that removes each configured secret. Seq is fed through
a ``QueueHandler``/``QueueListener`` pair, so a slow or dead Seq never stalls the event loop;
its HTTP calls have a timeout, and a failure to reach it is a console warning, not a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from datetime import UTC, datetime, tzinfo
from typing import Any, TextIO

from backupd.config import LogConfig, LogFormat
from backupd.process import mask

SEQ_TIMEOUT = 5.0
SEQ_BATCH = 20
SEQ_FLUSH_SECONDS = 2.0
SEQ_BACKLOG = 10_000
"""How many log events may wait for Seq in each of the two queues in front of it (backupd's own,
and seqlog's between its handler and its posting thread); beyond, events for Seq are dropped,
and the console, which has them all, says so once. A record takes about a kilobyte or two."""
QUIET = ("botocore", "aiobotocore", "urllib3", "asyncio", "aiohttp.access", "seqlog", "requests")


def _escapes() -> dict[int, str]:
    """Every control character (Unicode category Cc: C0, DEL, C1) and the Unicode line and
    paragraph separators, which ``str.splitlines`` and many log viewers break lines at, as the
    escape Python writes for it (``\\n``, ``\\x1b``, ``\\u2028``)."""
    codes = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
    return {code: repr(chr(code))[1:-1] for code in codes}


_ESCAPES = _escapes()


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters shown escaped, so that a name holding a line
    break (a database called ``"a<LF>Bcc: x@y"``) can neither add a mail header nor forge a log
    line. A backslash is kept as it is: names are shown, never parsed back."""
    return text.translate(_ESCAPES)


class MaskingFormatter(logging.Formatter):
    """Masks every secret; timestamps are ISO 8601 in ``tz`` with the offset (TIMEZONE)."""

    def __init__(
        self, secrets: list[str], fmt: str | None = None, tz: tzinfo | None = None
    ) -> None:
        super().__init__(fmt)
        self.secrets = secrets
        self.tz = tz if tz is not None else UTC

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, self.tz).isoformat(timespec="seconds")

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record), self.secrets)


class TextFormatter(MaskingFormatter):
    """A line of text per record: control characters in the line are escaped (masked first,
    so that a secret holding one is still found); a traceback (DEBUG) keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(mask(super().formatMessage(record), self.secrets))


class JsonFormatter(MaskingFormatter):
    """One JSON object per line, with a report's fields when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, self.tz).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "report", {}),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        # Masked before encoding: JSON writes a secret's quote, backslash or control
        # character escaped (``\"``, ``\\``, ``\t``), a spelling the secret is not found in.
        masked = {
            name: mask(value, self.secrets) if isinstance(value, str) else value
            for name, value in document.items()
        }
        return mask(json.dumps(masked, ensure_ascii=False, default=str), self.secrets)


class _Warner:
    """Says once a minute on the console that Seq cannot be reached."""

    def __init__(self, console: logging.Handler) -> None:
        self.console = console
        self.last = 0.0

    def __call__(self, error: BaseException) -> None:
        if time.monotonic() - self.last >= 60:
            self.last = time.monotonic()
            _console_warning(self.console, "cannot send logs to Seq: %s", seq_failure(error))


def seq_failure(error: BaseException) -> str:
    """What a failed send to Seq says: a connection that failed is its innermost cause, named
    by SEQ_URL (``SEQ_URL: [Errno 111] Connection refused``), not requests' and urllib3's
    wrappers of it (``HTTPConnectionPool(host=..., port=...): Max retries exceeded ...``)."""
    inner, seen = error, {id(error)}
    while (cause := inner.__cause__ or inner.__context__) is not None and id(cause) not in seen:
        inner = cause
        seen.add(id(cause))
    if isinstance(inner, OSError):
        return f"SEQ_URL: {inner}"
    return str(error)


def _console_warning(console: logging.Handler, message: str, *args: object) -> None:
    console.handle(
        logging.LogRecord("backupd.logs", logging.WARNING, __file__, 0, message, args, None)
    )


class _Drops:
    """Counts the log events dropped for Seq, and says once on the console that it happens."""

    def __init__(self, console: logging.Handler) -> None:
        self.console = console
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.count += 1
            first = self.count == 1
        if first:
            _console_warning(
                self.console,
                "Seq falls behind: with %d log events waiting for it, further ones are dropped "
                "for Seq (the console keeps them)",
                SEQ_BACKLOG,
            )


def _seq_handler(config: LogConfig, console: logging.Handler, drops: _Drops) -> logging.Handler:
    import seqlog
    from seqlog.structured_logging import SeqLogHandler

    extra = {"Application": "backupd", "Environment": config.environment}
    warn = _Warner(console)

    class ReportingSeqHandler(SeqLogHandler):  # type: ignore[misc]
        """Adds Application, Environment and a backup's fields to every event; a failure to
        post is a console warning (logging's default would print a traceback)."""

        def emit(self, record: logging.LogRecord) -> None:
            """Queue ``record`` for seqlog's posting thread, unless ``SEQ_BACKLOG`` wait there:
            seqlog's own queue has no bound, and a slow Seq made it grow without end. Only
            backupd's listener thread emits here, so the size cannot grow past the check."""
            if self.log_queue.qsize() >= SEQ_BACKLOG:
                drops()
            else:
                super().emit(record)

        def handleError(self, record: logging.LogRecord) -> None:
            warn(sys.exc_info()[1] or RuntimeError("unknown error"))

        def _build_event_data(self, record: logging.LogRecord) -> dict[str, Any]:
            event: dict[str, Any] = super()._build_event_data(record)
            template = event.get("MessageTemplate")
            if isinstance(template, str):
                # The message arrives formatted (and masked): as a template, a brace in it (a
                # database named "{Database}") would be read as a property to fill in. A
                # doubled brace is a literal one (messagetemplates.org).
                event["MessageTemplate"] = template.replace("{", "{{").replace("}", "}}")
            fields = {**extra, **getattr(record, "report", {})}
            event.setdefault("Properties", event).update(fields)
            return event

    api_key = config.seq_api_key.get_secret_value() if config.seq_api_key is not None else None
    handler = ReportingSeqHandler(
        config.seq_url, api_key=api_key, batch_size=SEQ_BATCH, auto_flush_timeout=SEQ_FLUSH_SECONDS
    )
    handler.session.request = functools.partial(handler.session.request, timeout=SEQ_TIMEOUT)
    seqlog.set_callback_on_failure(warn)
    return handler


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Never blocks: when Seq lags far behind, records for it are dropped (and counted)."""

    def __init__(self, records: queue.Queue[logging.LogRecord], drops: _Drops) -> None:
        super().__init__(records)
        self.drops = drops

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.drops()


class Logging:
    """The handlers backupd installed; ``close`` flushes Seq (bounded by its timeout)."""

    def __init__(
        self,
        listener: logging.handlers.QueueListener | None,
        drops: _Drops | None = None,
        console: logging.Handler | None = None,
    ) -> None:
        self.listener = listener
        self.drops = drops
        self.console = console if console is not None else logging.StreamHandler()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            for handler in self.listener.handlers:
                try:
                    _drain(handler)
                    handler.flush()  # seqlog's close drops a batch not yet sent
                    handler.close()
                except Exception as error:  # the command's work is done: never a traceback
                    _console_warning(
                        self.console, "cannot send logs to Seq: %s", seq_failure(error)
                    )
            self.listener = None
        if self.drops is not None and self.drops.count:
            _console_warning(
                self.drops.console,
                "%d log events were not sent to Seq: it fell behind",
                self.drops.count,
            )
            self.drops = None


def _drain(handler: logging.Handler) -> None:
    """Wait, at most ``SEQ_TIMEOUT`` seconds plus one, until seqlog's consumer thread has taken
    every record handed to ``handler`` into its batch.

    seqlog queues each record for that thread, and its ``flush`` sends only the batch: without
    this wait the last events of a run were lost one time in three. The bound covers a batch the
    thread is posting when Seq is slow; with Seq unreachable, records still queued when it
    expires are dropped, as a slow Seq's always were (``SEQ_TIMEOUT`` applies to connecting and
    to each read of a post, so one post can take longer).
    """
    records = getattr(handler, "log_queue", None)
    if not isinstance(records, queue.Queue):
        return
    with records.all_tasks_done:
        records.all_tasks_done.wait_for(lambda: not records.unfinished_tasks, SEQ_TIMEOUT + 1)


def setup_logging(
    config: LogConfig | None = None, secrets: list[str] | None = None, stream: TextIO | None = None
) -> Logging:
    """Console lines to ``stream`` (stdout by default), Seq when configured."""
    config = config if config is not None else LogConfig.model_validate({})
    hidden = secrets or []
    console = logging.StreamHandler(stream if stream is not None else sys.stdout)
    if config.format is LogFormat.JSON:
        console.setFormatter(JsonFormatter(hidden, tz=config.tz))
    else:
        console.setFormatter(
            TextFormatter(hidden, "%(asctime)s %(levelname)-7s %(message)s", config.tz)
        )
    handlers: list[logging.Handler] = [console]
    listener = drops = None
    if config.seq_url:
        drops = _Drops(console)
        records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=SEQ_BACKLOG)
        queued = _DroppingQueueHandler(records, drops)
        queued.setFormatter(MaskingFormatter(hidden, "%(message)s"))
        listener = logging.handlers.QueueListener(records, _seq_handler(config, console, drops))
        listener.start()
        handlers.append(queued)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(config.level)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return Logging(listener, drops, console)
