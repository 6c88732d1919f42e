"""Deployment: the Docker image's recipe, the wheel in a clean environment, the docs' commands.

No Docker engine runs here, so the image itself is not built; what it does is
checked piece by piece: the Dockerfile runs pooljob as a non-root user with
extras that pyproject.toml defines, and the same wheel, installed with the
same extras into a fresh virtual environment (from ``.wheelhouse``, which
``make test`` fills; no network), runs the CLI end to end from outside the
source tree.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import polars as pl
import pytest

from pooljob.job.cli import build_parser
from pooljob.scan.resources import cgroup_cpu_limit, cgroup_memory_limit

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
WHEELHOUSE = ROOT / ".wheelhouse"


def _dockerfile_extras() -> list[str]:
    match = re.search(r"^ARG EXTRAS=(\S*)$", DOCKERFILE, re.MULTILINE)
    assert match, "the Dockerfile sets its extras with one 'ARG EXTRAS=a,b' line"
    return [e for e in match.group(1).split(",") if e]


def test_the_image_runs_pooljob_as_a_non_root_user() -> None:
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(r'^ENTRYPOINT \["pooljob"\]', final_stage, re.MULTILINE)


def test_the_image_extras_are_defined_by_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in _dockerfile_extras():
        assert extra in extras, (
            f"the Dockerfile installs extra {extra!r}, pyproject has {sorted(extras)}"
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max\n", None),  # cgroup v2: no limit
        ("2147483648\n", 2**31),  # cgroup v2 or v1: 2 GiB
        ("9223372036854771712\n", None),  # cgroup v1: no limit
        ("garbage", None),
    ],
)
def test_a_containers_memory_limit_is_read_from_its_cgroup(
    tmp_path: Path, text: str, expected: int | None
) -> None:
    limit = tmp_path / "memory.max"
    limit.write_text(text)
    assert cgroup_memory_limit((tmp_path / "absent", limit)) == expected
    assert cgroup_memory_limit((tmp_path / "absent",)) is None


def _doc_commands() -> list[list[str]]:
    """The `pooljob …` command lines in docs/deployment.md's code blocks."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    commands: list[list[str]] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)  # comments (shell, Python, YAML)
            if "docker build" in line:
                continue
            for match in re.finditer(r"\bpooljob((?:\s+(?!\||>|2>|&&|;)[^\s|;&>]+)+)", line):
                words = shlex.split(match.group(1).replace('"', " ").replace(",", " "))
                if (words and words[0].startswith("-")) or words[:1] in (
                    ["run"],
                    ["validate"],
                    ["explain"],
                    ["predict"],
                ):
                    commands.append(words)
    return commands


def test_the_deployment_docs_use_only_options_the_cli_has() -> None:
    commands = _doc_commands()
    assert len(commands) >= 4, commands
    parser = build_parser()
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit as exc:  # argparse's way of saying no
            raise AssertionError(
                f"docs/deployment.md: `pooljob {shlex.join(words)}` does not parse"
            ) from exc


def test_the_wheel_runs_from_a_clean_virtual_environment(tmp_path: Path) -> None:
    """Build the wheel, install it with the image's extras into a new venv, run a job."""
    if not WHEELHOUSE.is_dir():
        if os.environ.get("CI"):
            pytest.fail(".wheelhouse is missing: `make test` builds it (make wheelhouse)")
        pytest.skip(".wheelhouse is missing: run `make wheelhouse` (needs the network once)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    offline = ["--no-index", "--find-links", str(WHEELHOUSE), "--quiet"]
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT), *offline],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    (wheel,) = dist.glob("pooljob-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    extras = ",".join(_dockerfile_extras())
    requirement = f"pooljob[{extras}] @ {wheel.as_uri()}" if extras else str(wheel)
    # pip from this environment installs into the new one (--python): no ensurepip, no network.
    # --no-compile: no .pyc for scipy, pyarrow and the rest (the slow part); they run without
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-compile"]
    subprocess.run(
        [*install, *offline, requirement],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    pooljob = venv / "bin" / "pooljob"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(pooljob), *args], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert cli("--version").startswith("pooljob ")
    cli("demo-data", "--rows", "2000", "data")
    config = tmp_path / "job.toml"
    config.write_text(
        '[source]\npath = "data/**/*.parquet"\n\n'
        '[model]\nformula = "income ~ 1 + (1 | state/county)"\n\n'
        '[output]\npath = "out"\n'
    )
    cli("validate", str(config))
    cli("--quiet", "run", str(config))
    estimates = pl.read_parquet(tmp_path / "out" / "current" / "estimates.parquet")
    assert estimates.height > 0
    # the extras' packages import in the clean environment (module names from pyproject)
    code = "import pooljob, duckdb, polars, numpy, scipy, pyarrow; print(pooljob.__file__)"
    if "delta" in _dockerfile_extras():
        code = "import deltalake; " + code
    where = subprocess.run(
        [str(python), "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert where.returncode == 0, where.stderr
    assert str(venv) in where.stdout  # the installed wheel, not the source tree


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("max 100000\n", None, None),
        ("200000 100000\n", None, 2),
        ("150000 100000\n", None, 2),  # 1.5 CPUs: two threads
        ("50000 100000\n", None, 1),
        (None, ("-1", "100000"), None),
        (None, ("400000", "100000"), 4),
        (None, None, None),
    ],
)
def test_a_containers_cpu_quota_is_read_from_its_cgroup(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, expected: int | None
) -> None:
    v2_file, v1_files = tmp_path / "cpu.max", (tmp_path / "quota", tmp_path / "period")
    if v2 is not None:
        v2_file.write_text(v2)
    if v1 is not None:
        v1_files[0].write_text(v1[0])
        v1_files[1].write_text(v1[1])
    assert cgroup_cpu_limit(v2_file, v1_files) == expected
