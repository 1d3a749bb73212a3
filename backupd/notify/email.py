"""Mail about backups over SMTP (aiosmtplib). A failed send is a warning, never a failed backup."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

import aiosmtplib

from backupd.config import EmailConfig, EmailOn, EmailTLS
from backupd.notify.base import Report, State

SEND_TIMEOUT = 30.0


def wanted(config: EmailConfig, report: Report) -> bool:
    return config.enabled and (
        config.on is EmailOn.ALWAYS or not report.ok or report.state is State.ANOMALY
    )


def subject(report: Report) -> str:
    if report.kind == "verify":
        word = "verified" if report.ok else "VERIFY FAILED"
        return f"[backupd] {report.target}: {report.database} {word}"
    word = {State.FAILED: "FAILED", State.ANOMALY: "looks ANOMALOUS"}.get(report.state, "succeeded")
    return f"[backupd] {report.target}: backup of {report.database} {word}"


def body(report: Report) -> str:
    when = f"{report.finished:%Y-%m-%d %H:%M:%S %Z}"
    if report.kind == "verify":
        return f"{report.note or report.error}\n\nFinished: {when}\n"
    if report.ok:
        lines = [
            f"The backup of {report.database} ({report.engine}, target {report.target}) succeeded.",
            "",
            f"Object:     {report.key}",
            f"Size:       {report.size:,} bytes",
            f"Duration:   {report.duration_s:.1f} s",
            f"Throughput: {report.throughput / 1e6:.1f} MB/s",
            f"SHA-256:    {report.sha256}",
            f"Finished:   {when}",
        ]
        if report.note:
            lines += ["", f"Warning: {report.note}"]
    else:
        lines = [
            f"The backup of {report.database} ({report.engine}, target {report.target}) FAILED.",
            "",
            f"Step:     {report.step}",
            f"Finished: {when}",
            "",
            "Error (with the last lines the dump tool wrote):",
            f"{report.error}",
            "",
            "Nothing was stored for this run: no object, no open upload.",
        ]
    return "\n".join(lines) + "\n"


def compose(config: EmailConfig, report: Report) -> EmailMessage:
    message = EmailMessage()
    message["From"] = config.sender or ""
    message["To"] = ", ".join(config.recipients)
    message["Subject"] = subject(report)
    message.set_content(body(report))
    return message


def tls_options(config: EmailConfig) -> tuple[bool, bool]:
    """(use_tls, start_tls): ``ssl`` is implicit TLS; ``starttls`` is demanded, not merely
    tried (aiosmtplib's default would go on in plain text); ``none`` is plain text."""
    tls = config.effective_tls
    return tls is EmailTLS.SSL, tls is EmailTLS.STARTTLS


async def send(config: EmailConfig, report: Report) -> None:
    message = compose(config, report)
    password = config.password.get_secret_value() if config.password is not None else None
    use_tls, start_tls = tls_options(config)
    async with asyncio.timeout(SEND_TIMEOUT):
        await aiosmtplib.send(
            message,
            hostname=config.smtp,
            port=config.effective_port,
            username=config.user,
            password=password,
            timeout=10,
            use_tls=use_tls,
            start_tls=start_tls,
        )
