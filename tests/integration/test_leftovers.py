"""What a failed run leaves in the storage: nothing when its removals worked or found nothing
to remove, and otherwise a sentence that travels with its error to the report."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from backupd.backup import _removed_unless_recorded, left_behind
from backupd.errors import DumpError
from backupd.storage import open_storage
from tests.integration.test_storage import s3_config
from tests.servers import http_server

KEY = "backups/20250101/backup_app_20250101_000000_0123abcd.dump"


@pytest.fixture
def no_deletes() -> Iterator[str]:
    """An S3 endpoint that refuses every request with 403 AccessDenied, as a bucket policy
    without s3:DeleteObject refuses a removal."""

    class Refusing(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _refuse

        def log_message(self, *args: Any) -> None:
            return None

    with http_server(Refusing) as url:
        yield url


async def test_a_missing_bucket_holds_nothing_to_remove(moto_url: str) -> None:
    async with open_storage(s3_config(moto_url, "nobucket")) as storage:
        with pytest.raises(DumpError) as raised:
            async with _removed_unless_recorded(storage) as written:
                written.append(KEY)
                raise DumpError("upload refused")

    assert left_behind(raised.value) is None


@pytest.mark.parametrize(
    ("keys", "left"),
    [
        # its commit failed: whether the object exists is not known
        ([KEY], f"this run's object {KEY} may have been written (the upload's last request"),
        ([KEY, KEY + ".manifest.json"], f"this run's manifest {KEY}.manifest.json could not"),
    ],
)
async def test_what_could_not_be_removed_travels_with_the_error(
    no_deletes: str, keys: list[str], left: str
) -> None:
    async with open_storage(s3_config(no_deletes, "bucket")) as storage:
        with pytest.raises(DumpError) as raised:
            async with _removed_unless_recorded(storage) as written:
                written.extend(keys)
                raise DumpError("upload refused")

    said = left_behind(raised.value)
    assert said is not None and said.startswith(left)
    assert "denied it (AccessDenied); the identity of STORAGE_ACCESS_KEY_ID lacks" in said
    assert str(raised.value) == "upload refused"
