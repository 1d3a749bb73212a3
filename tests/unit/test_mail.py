"""Mail: headers receiving servers expect, and one line naming the setting when SMTP fails."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiosmtplib
import pytest

from backupd.backup import LEFT_BEHIND, TargetRun
from backupd.config import EmailConfig
from backupd.environment import load_target
from backupd.errors import StorageError
from backupd.notify.base import Report, State
from backupd.notify.email import _why, body, check_message, compose
from backupd.report import reports_of
from tests.unit.test_config import MINIMAL


def mail_config(**extra: str) -> EmailConfig:
    return EmailConfig.model_validate(
        {
            "EMAIL_SMTP": "relay.internal",
            "EMAIL_FROM": "backupd@example.org",
            "EMAIL_TO": "a@b",
            **extra,
        }
    )


def test_every_mail_has_a_date_and_a_unique_message_id() -> None:
    report = Report("t", "app", "postgres", State.SUCCEEDED, datetime.now(UTC), size=2048)

    first, second = compose(mail_config(), report), check_message(mail_config(), "t")

    assert parsedate_to_datetime(first["Date"]).tzinfo is not None
    assert first["Message-ID"].endswith("@example.org>")
    assert first["Message-ID"] != second["Message-ID"]
    assert "Size:       2.0 KiB (2,048 bytes)" in first.get_content()


@pytest.mark.parametrize(
    ("sender", "ends"),
    [
        ("Backups <backupd@example.org>", "@example.org>"),  # was "@example.org>>"
        ("root", None),  # was "@root>"
    ],
)
def test_the_message_id_takes_the_sender_s_domain_when_it_has_one(
    sender: str, ends: str | None
) -> None:
    report = Report("t", "app", "postgres", State.SUCCEEDED, datetime.now(UTC))

    message_id = compose(mail_config(EMAIL_FROM=sender), report)["Message-ID"]

    assert message_id.startswith("<") and message_id.count(">") == 1
    assert message_id.endswith(ends) if ends else not message_id.endswith("@root>")


@pytest.mark.parametrize(
    ("extra", "error", "line"),
    [
        (
            {},
            aiosmtplib.SMTPConnectError("Error connecting to relay.internal on port 587: refused"),
            "EMAIL_SMTP relay.internal:587: "
            "Error connecting to relay.internal on port 587: refused",
        ),
        (
            {"EMAIL_TLS": "ssl"},
            aiosmtplib.SMTPConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            "EMAIL_SMTP relay.internal:465: implicit TLS failed (EMAIL_TLS=ssl): "
            "[SSL: WRONG_VERSION_NUMBER] wrong version number",
        ),
        (
            {"EMAIL_PORT": "465", "EMAIL_TLS": "starttls"},
            aiosmtplib.SMTPConnectTimeoutError("Timed out connecting to relay.internal"),
            "EMAIL_SMTP relay.internal:465: Timed out connecting to relay.internal (no greeting: "
            "a port for implicit TLS? then set EMAIL_TLS=ssl)",
        ),
        (
            {"EMAIL_USER": "u", "EMAIL_PASSWORD": "p"},
            aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Authentication credentials invalid"),
            "EMAIL_SMTP relay.internal:587: (535, '5.7.8 Authentication credentials invalid')",
        ),
    ],
)
def test_a_failed_conversation_is_one_line_naming_the_setting(
    extra: dict[str, str], error: Exception, line: str
) -> None:
    assert _why(mail_config(**extra), error) == line


@pytest.mark.parametrize(
    ("left_behind", "says", "never"),
    [
        (None, "Nothing was stored for this run: no object, no open upload.", "Left in"),
        (
            "this run's object k.dump could not be removed after the run failed (AccessDenied)",
            "Left in the storage: this run's object k.dump could not be removed",
            "Nothing was stored",
        ),
    ],
)
def test_a_failure_mail_says_nothing_was_stored_only_when_nothing_was_left(
    left_behind: str | None, says: str, never: str
) -> None:
    report = Report(
        "t",
        "app",
        "postgres",
        State.FAILED,
        datetime.now(UTC),
        step="upload",
        error="refused",
        left_behind=left_behind,
    )

    text = body(report)

    assert says in text
    assert never not in text


@pytest.mark.parametrize("kind", ["backup", "verify"])
def test_a_database_named_with_a_line_break_gets_its_mail_with_the_break_escaped(
    kind: str,
) -> None:
    name = "line1\nBcc: evil@example.com"
    report = Report("t", name, "postgres", State.FAILED, datetime.now(UTC), kind=kind, error="x")

    message = compose(mail_config(), report)
    sent = message.as_bytes()  # what SMTP sends; a header with a line break raises here

    assert "line1\\nBcc: evil@example.com" in message["Subject"]
    assert message["Bcc"] is None and b"\nBcc:" not in sent


def test_what_a_failed_run_left_behind_reaches_its_report_masked() -> None:
    target = load_target(MINIMAL)
    error = StorageError("upload refused")
    error.add_note(LEFT_BEHIND + "this run's object k.dump could not be removed (pw-Secret-42)")
    run = TargetRun(target.name, failures=[("app", error)])

    (report,) = reports_of(target, run)
    (whole,) = reports_of(target, None, error)
    (clean,) = reports_of(target, TargetRun(target.name, failures=[("app", StorageError("x"))]))

    assert report.left_behind == whole.left_behind
    assert report.left_behind is not None
    assert report.left_behind.startswith("this run's object k.dump could not be removed")
    assert "pw-Secret-42" not in report.left_behind
    assert clean.left_behind is None


@pytest.mark.parametrize("ending", ["\n", "\r\n", " ", "\t\n"])
def test_a_sender_ending_in_a_line_break_still_gets_its_mail_composed(ending: str) -> None:
    """A Kubernetes ConfigMap's ``EMAIL_FROM: |`` block ends the value with a line break."""
    target = load_target(
        {
            **MINIMAL,
            "EMAIL_SMTP": "relay.internal",
            "EMAIL_FROM": f"backupd@example.org{ending}",
            "EMAIL_TO": f"ops@example.org{ending}",
        }
    )
    report = Report("t", "app", "postgres", State.FAILED, datetime.now(UTC), error="boom")

    for message in (check_message(target.email, "t"), compose(target.email, report)):
        assert message["From"] == "backupd@example.org"
        assert message["To"] == "ops@example.org"
        assert message["Message-ID"].endswith("@example.org>")
