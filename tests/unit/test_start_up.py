"""The cyclic garbage collector is off while a command starts, and on again afterwards."""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from backupd import cli


@pytest.fixture(autouse=True)
def _collector_as_it_was() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def test_a_command_turns_collection_back_on_however_it_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.run_command(["--env-file", str(tmp_path / "absent.env"), "once"])

    assert status == cli.EXIT_CONFIG
    assert "absent.env: no such file" in capsys.readouterr().err
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # what start-up made is left out of later collections


def test_collection_resumes_after_start_up_while_a_command_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "START_UP_SECONDS", 0.05)
    seen: list[bool] = []

    async def command() -> int:
        seen.append(gc.isenabled())
        await asyncio.sleep(0.3)
        seen.append(gc.isenabled())
        return cli.EXIT_OK

    gc.disable()
    assert cli.run_cancellable(command()) == cli.EXIT_OK
    assert seen == [False, True]


def test_resuming_twice_freezes_nothing_made_in_between() -> None:
    gc.disable()
    cli.resume_collection()
    made_since = [object()]
    cli.resume_collection()

    assert gc.isenabled()
    # Frozen objects leave the generations that gc.get_objects() lists.
    assert any(tracked is made_since for tracked in gc.get_objects())


def test_what_a_backup_imports_before_its_dump_starts_leaves_out_the_heavy_clients() -> None:
    """Importing the CLI and the backup pipeline loads neither the storage client (aiobotocore,
    aiohttp: imported while the dump already runs) nor mail, the health check's HTTP client or
    the other commands' modules (imported when used). Seq, when configured, brings ``requests``
    and with it ``http.client`` at logging's set-up."""
    later = ("aiobotocore", "aiohttp", "aiosmtplib", "http.client", "backupd.daemon")
    code = (
        "import sys, backupd.cli, backupd.backup; "
        f"print(','.join(m for m in {later!r} if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert found.stdout.strip() == ""


@pytest.mark.parametrize(
    ("http_host", "asked"),
    [
        (str(IPv4Address(0)), "127.0.0.1"),  # every IPv4 address
        ("", "127.0.0.1"),
        ("::", "::1"),
        ("[::]", "::1"),
        ("127.0.0.2", "127.0.0.2"),
        ("::1", "::1"),
        ("10.1.2.3", "10.1.2.3"),
        ("backupd.internal", "backupd.internal"),
    ],
)
def test_healthcheck_asks_where_the_service_listens(http_host: str, asked: str) -> None:
    assert cli.healthz_host(http_host) == asked


def test_every_command_s_help_has_a_description_and_examples() -> None:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.choices.items():
        text = command.format_help()
        assert command.description, name
        assert "example" in text, name


INTERRUPT_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "backupd.catalogue":  # imported by the command line, before any handler
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["backupd", "once"]
from backupd.__main__ import main
main()
"""


def test_ctrl_c_while_the_modules_load_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPT_WHILE_IMPORTING],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )

    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr == "backupd: interrupted while starting; nothing was done\n"
    assert result.returncode == 1


def test_an_ipv6_http_host_written_in_brackets_is_served_and_asked(unused_port: int) -> None:
    """``HTTP_HOST=[::1]``, as a URL writes it: ``healthcheck`` took it, ``run`` refused it as
    "not an address of this machine"."""
    from backupd.config import DaemonConfig
    from backupd.metrics import Metrics, serve

    config = DaemonConfig.model_validate({"HTTP_HOST": " [::1] ", "HTTP_PORT": str(unused_port)})

    async def serve_and_close() -> None:
        runner = await serve(Metrics(), lambda: True, config.http_host, config.http_port)
        await runner.cleanup()

    assert config.http_host == "::1"
    assert cli.healthz_host(config.http_host) == "::1"
    asyncio.run(serve_and_close())


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        return int(probe.getsockname()[1])
