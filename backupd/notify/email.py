"""Mail about backups over SMTP (aiosmtplib). A failed send is a warning, never a failed backup."""

from __future__ import annotations

import asyncio
import email.utils
import ssl
from email.message import EmailMessage

import aiosmtplib

from backupd.config import EmailConfig, EmailOn, EmailTLS
from backupd.logs import escape_controls
from backupd.notify.base import NotifyError, Report, State
from backupd.units import human_rate, human_size

SEND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0


def wanted(config: EmailConfig, report: Report) -> bool:
    return config.enabled and (
        config.on is EmailOn.ALWAYS or not report.ok or report.state is State.ANOMALY
    )


def subject(report: Report) -> str:
    """One line whatever the names hold: a header value cannot carry a line break, so a
    database named with one lost its mail; its control characters are shown escaped."""
    if report.kind == "verify":
        word = "verified" if report.ok else "VERIFY FAILED"
        return escape_controls(f"[backupd] {report.target}: {report.database} {word}")
    if report.kind == "prune":
        return escape_controls(f"[backupd] {report.target}: prune FAILED")
    word = {State.FAILED: "FAILED", State.ANOMALY: "looks ANOMALOUS"}.get(report.state, "succeeded")
    return escape_controls(f"[backupd] {report.target}: backup of {report.database} {word}")


def body(report: Report) -> str:
    when = f"{report.finished:%Y-%m-%d %H:%M:%S %Z}"
    if report.kind == "verify":
        return f"{report.note or report.error}\n\nFinished: {when}\n"
    if report.kind == "prune":
        return _prune_body(report, when)
    what = escape_controls(f"{report.database} ({report.engine}, target {report.target})")
    if report.ok:
        lines = [
            f"The backup of {what} succeeded.",
            "",
            f"Object:     {report.key}",
            f"Size:       {human_size(report.size)} ({report.size:,} bytes)",
            f"Duration:   {report.duration_s:.1f} s",
            f"Throughput: {human_rate(report.size, report.duration_s)}",
            f"SHA-256:    {report.sha256}",
            f"Finished:   {when}",
        ]
        if report.note:
            lines += ["", f"Warning: {report.note}"]
    else:
        lines = [
            f"The backup of {what} FAILED.",
            "",
            f"Step:     {report.step}",
            f"Finished: {when}",
            "",
            "Error (with the last lines the dump tool wrote):",
            f"{report.error}",
            "",
            _leftovers(report),
        ]
    return "\n".join(lines) + "\n"


def _prune_body(report: Report, when: str) -> str:
    """A prune's failure: nothing the policy keeps was deleted, but storage is growing."""
    what = escape_controls(f"target {report.target} ({report.engine}, {report.database})")
    lines = [
        f"Pruning {what} after its backup FAILED. The backup itself succeeded.",
        "",
        f"Finished: {when}",
        "",
        f"Error: {report.error}",
        "",
        "Nothing the retention policy keeps was deleted. The backups it no longer keeps stay in",
        "the storage (and cost what they cost there) until a prune succeeds: the next run",
        f"prunes again, or run `backupd prune --target {escape_controls(report.target)}`.",
    ]
    return "\n".join(lines) + "\n"


def _leftovers(report: Report) -> str:
    """What a failed run left in the storage, as its report says."""
    if report.left_behind is None:
        return "Nothing was stored for this run: no object, no open upload."
    return f"Left in the storage: {report.left_behind}."


def compose(config: EmailConfig, report: Report) -> EmailMessage:
    return _message(config, subject(report), body(report))


def _message(config: EmailConfig, subject_line: str, text: str) -> EmailMessage:
    """A plain-text mail with the headers receiving servers expect: Date and Message-ID."""
    message = EmailMessage()
    message["From"] = config.sender or ""
    message["To"] = ", ".join(config.recipients)
    message["Subject"] = subject_line
    message["Date"] = email.utils.formatdate(localtime=True)
    # The sender's domain (of "Name <name@example.org>" too); none for a bare local name
    # ("root", which a local relay completes): Python's make_msgid then uses the host's name.
    _, at, domain = email.utils.parseaddr(config.sender or "")[1].rpartition("@")
    message["Message-ID"] = email.utils.make_msgid("backupd", domain=domain if at else None)
    message.set_content(text)
    return message


def check_message(config: EmailConfig, target: str) -> EmailMessage:
    """What ``backupd check --send-test`` sends."""
    return _message(
        config,
        f"[backupd] {target}: test mail",
        f"This is a test mail from `backupd check --send-test` for target {target}.\n"
        "Mail about backups will arrive the same way.\n",
    )


def tls_options(config: EmailConfig) -> tuple[bool, bool | None]:
    """(use_tls, start_tls) for aiosmtplib, where ``start_tls=None`` upgrades only if offered.

    ``EMAIL_TLS=ssl`` (or port 465): implicit TLS. ``EMAIL_TLS=starttls``: STARTTLS demanded.
    ``EMAIL_TLS=none``: plain text, even with credentials. Unset on another port: STARTTLS is
    demanded when credentials are sent, and used when the relay offers it otherwise (a plain
    relay on a private network still gets mail).
    """
    tls = config.effective_tls
    if tls is EmailTLS.SSL:
        return True, False
    if tls is EmailTLS.NONE:
        return False, False
    if config.tls is EmailTLS.STARTTLS or config.user is not None:
        return False, True
    return False, None


def _starttls_missing(config: EmailConfig) -> str:
    rule = (
        "EMAIL_TLS=starttls"
        if config.tls is EmailTLS.STARTTLS
        else "demanded when credentials are sent"
    )
    return (
        f"EMAIL_SMTP {config.smtp}:{config.effective_port} does not offer STARTTLS ({rule}): "
        "enable TLS on the relay, set EMAIL_TLS=ssl for implicit TLS, or EMAIL_TLS=none to "
        "send in plain text"
    )


def _why(config: EmailConfig, error: BaseException) -> str:
    """One line for a failed SMTP conversation, naming EMAIL_TLS when TLS is the cause."""
    where = f"EMAIL_SMTP {config.smtp}:{config.effective_port}"
    text = str(error) or type(error).__name__
    if isinstance(error, ssl.SSLError) or "SSL" in text or "TLS" in text:
        mode = "implicit TLS" if tls_options(config)[0] else "STARTTLS"
        return f"{where}: {mode} failed (EMAIL_TLS={config.effective_tls}): {text}"
    if isinstance(error, TimeoutError | aiosmtplib.SMTPTimeoutError) and not tls_options(config)[0]:
        return f"{where}: {text} (no greeting: a port for implicit TLS? then set EMAIL_TLS=ssl)"
    return f"{where}: {text}"


async def _deliver(config: EmailConfig, messages: list[EmailMessage]) -> list[str]:
    """Connect, EHLO, STARTTLS/TLS and login as configured; send ``messages`` in turn over that
    one session: a run's mails (one per database) never open a connection each, which relays
    that cap a client's connections (Exchange Online: 3) refuse. The conversation up to the
    first mail, and each mail, gets ``SEND_TIMEOUT``.

    Return the steps taken (``["STARTTLS", "login"]``); raise NotifyError with one line.
    """
    use_tls, start_tls = tls_options(config)
    password = config.password.get_secret_value() if config.password is not None else ""
    client = aiosmtplib.SMTP(
        hostname=config.smtp,
        port=config.effective_port,
        timeout=CONNECT_TIMEOUT,
        use_tls=use_tls,
        start_tls=False,
    )
    steps = ["implicit TLS"] if use_tls else []
    sent = 0
    refused: dict[str, aiosmtplib.SMTPResponse] = {}
    try:
        async with asyncio.timeout(SEND_TIMEOUT) as deadline:
            await client.connect()
            try:
                await client.ehlo()
                if start_tls is not False and client.supports_extension("starttls"):
                    await client.starttls()
                    steps.append("STARTTLS")
                elif start_tls:
                    raise NotifyError(_starttls_missing(config))
                elif not use_tls:
                    steps.append("no TLS")
                if config.user is not None:
                    await client.login(config.user, password)
                    steps.append(f"login as {config.user}")
                for message in messages:
                    deadline.reschedule(asyncio.get_running_loop().time() + SEND_TIMEOUT)
                    refused.update((await client.send_message(message))[0])
                    sent += 1
                if messages:
                    steps.append(f"sent to {len(config.recipients)} recipient(s)")
                await client.quit()
            finally:
                client.close()
    except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as error:
        done = f" (after {sent} of {len(messages)} mails)" if sent else ""
        raise NotifyError(_why(config, error) + done) from None
    if refused:
        raise NotifyError(_refused(config, refused))
    return steps


def _refused(config: EmailConfig, refused: dict[str, aiosmtplib.SMTPResponse]) -> str:
    """One line for recipients of EMAIL_TO the relay refused while it took the others (the
    SMTP client reports only a refusal of every recipient as an error)."""
    each = "; ".join(
        f"{address}: {answer.code} {answer.message}" for address, answer in refused.items()
    )
    return (
        f"EMAIL_SMTP {config.smtp}:{config.effective_port} refused EMAIL_TO recipient(s) "
        f"({each}); the others got the mail"
    )


async def verify(config: EmailConfig) -> list[str]:
    """What ``backupd check`` does: the whole conversation up to login, sending nothing."""
    return await _deliver(config, [])


async def send_all(config: EmailConfig, reports: list[Report]) -> None:
    """A mail per report, all over one SMTP session (see ``_deliver``)."""
    await _deliver(config, [compose(config, report) for report in reports])


async def send_test(config: EmailConfig, target: str) -> list[str]:
    return await _deliver(config, [check_message(config, target)])
