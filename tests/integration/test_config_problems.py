"""Values that used to pass validation and then fail with a traceback, or a run failing "at
internal": the real command exits 2 with one line naming the variable, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_backupd

S3 = {
    "STORAGE_TYPE": "s3",
    "STORAGE_ENDPOINT_URL": "http://127.0.0.1:1",  # nothing listens: never reached
    "STORAGE_ACCESS_KEY_ID": "backupd-test-key-id",
    "STORAGE_SECRET_ACCESS_KEY": "backupd-test-SECRET-8f1c2e",
    "STORAGE_BUCKET_NAME": "bucket",
}


NUL_IN_PASSWORD = b"DB_PASSWORD=se\x00cret-Value\n"


@pytest.mark.parametrize(
    ("command", "settings", "dotenv", "variable"),
    [
        pytest.param("check", {"TIMEZONE": "Europe"}, b"", "TIMEZONE", id="zone-folder"),
        pytest.param("once", {"TIMEZONE": "A" * 300}, b"", "TIMEZONE", id="zone-too-long"),
        pytest.param(
            "list",
            {**S3, "STORAGE_ENDPOINT_URL": "http://bad host:9000"},
            b"",
            "STORAGE_ENDPOINT_URL",
            id="endpoint-with-space",
        ),
        pytest.param(
            "once",
            {**S3, "STORAGE_ENDPOINT_URL": "http://"},
            b"",
            "STORAGE_ENDPOINT_URL",
            id="endpoint-without-host",
        ),
        pytest.param(
            "verify",
            {**S3, "STORAGE_REGION": "EU (Frankfurt)"},
            b"",
            "STORAGE_REGION",
            id="region-not-a-label",
        ),
        pytest.param(
            "check",
            {**S3, "STORAGE_BUCKET_NAME": "s3://my-bucket"},
            b"",
            "STORAGE_BUCKET_NAME",
            id="bucket-as-url",
        ),
        pytest.param(
            "check", {"STORAGE_PART_SIZE": "0"}, b"", "STORAGE_PART_SIZE", id="local-part-0"
        ),
        pytest.param(
            "once", {"STORAGE_PART_SIZE": "100GiB"}, b"", "STORAGE_PART_SIZE", id="local-part-huge"
        ),
        pytest.param("once", {}, NUL_IN_PASSWORD, "DB_PASSWORD", id="nul-in-env-file-once"),
        pytest.param("check", {}, NUL_IN_PASSWORD, "DB_PASSWORD", id="nul-in-env-file-check"),
        pytest.param(
            "once",
            {"STORAGE_LOCAL_PATH": "/tmp/" + "x" * 300},
            b"",
            "STORAGE_LOCAL_PATH",
            id="local-path-too-long",
        ),
    ],
)
def test_a_value_that_would_fail_at_run_time_is_one_problem_line_and_exit_2(
    tmp_path: Path, command: str, settings: dict[str, str], dotenv: bytes, variable: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / ".env").write_bytes(dotenv)  # read from the working directory
    env = {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "1",  # nothing listens: never reached
        "DB_USER": "u",
        "DB_DATABASE": "app",
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(out),
        "HTTP_PORT": "0",
        **settings,
    }

    result = run_backupd(command, env=env, timeout=60)

    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-800:]
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == "backupd: invalid configuration:"
    problems = result.stderr.splitlines()[1:]
    assert len(problems) == 1, result.stderr
    assert variable in problems[0]
    assert "cret-Value" not in result.stdout + result.stderr
    assert list(out.iterdir()) == []
