"""``make demo`` keeps working: it is a newcomer's first command."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import child_env

ROOT = Path(__file__).resolve().parent.parent.parent


def test_demo_backs_up_restores_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.demo"],
        cwd=ROOT,
        env=child_env({}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "restored copy matches the original" in output
    assert "restored MariaDB copy matches the original" in output
    assert "1 backup(s), 1 complete" in output
    assert "every server it started is stopped and removed" in output
    assert not list(Path(tempfile.gettempdir()).glob("backupd-demo-*"))
