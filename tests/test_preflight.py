"""scripts/preflight.sh: a machine without a requirement is told everything it lacks at once, before any work.

Starts no service: the script only looks at PATH, versions and the user id.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFLIGHT = ROOT / "scripts" / "preflight.sh"


def stripped_path(tmp_path: Path, without: set[str]) -> str:
    """A PATH of one directory linking every command of the real PATH except `without` (first one wins)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not Path(folder).is_dir():
            continue
        for exe in Path(folder).iterdir():
            link = fake / exe.name
            if exe.name in without or link.exists() or link.is_symlink():
                continue
            if exe.is_file() and os.access(exe, os.X_OK):
                link.symlink_to(exe)
    return str(fake)


def preflight(mode: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=path) if path is not None else None
    return subprocess.run([str(PREFLIGHT), mode], capture_output=True, text=True, env=env, check=False, timeout=60)


@pytest.mark.parametrize("mode", ["setup", "demo", "test"] + (["cluster"] if os.geteuid() == 0 else []))
def test_passes_on_this_machine(mode: str) -> None:
    res = preflight(mode)
    assert res.returncode == 0, res.stderr
    assert res.stdout == res.stderr == ""  # silent when nothing is missing


def test_names_every_missing_tool_in_one_message(tmp_path: Path) -> None:
    res = preflight("test", stripped_path(tmp_path, {"mvn", "go", "java"}))
    assert res.returncode == 1
    message = res.stderr
    assert message.count("preflight (test)") == 1, message  # one message, not one failure per tool
    lines = [line for line in message.splitlines() if line.startswith("  - ")]
    assert [line.split()[1] for line in lines] == ["java", "mvn", "go"], message
    assert "apt-get install -y maven" in message and "openjdk-17" in message and "go.dev/dl" in message
    assert "lacks 3 requirement(s)" in message


def test_demo_does_not_need_go(tmp_path: Path) -> None:
    """Each goal asks only for what it uses: `make demo` runs no Go build."""
    res = preflight("demo", stripped_path(tmp_path, {"go"}))
    assert res.returncode == 0, res.stderr


def test_unknown_mode_is_a_usage_error() -> None:
    assert preflight("everything").returncode == 2


def test_too_little_disk_is_named_with_what_the_goal_needs(tmp_path: Path) -> None:
    """A `df` that reports 500 MB free: the goal is refused before it starts, not half-way through a download."""
    path = stripped_path(tmp_path, {"df"})
    (tmp_path / "bin" / "df").write_text(
        "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted'\n"
        "echo \"/dev/fake 100000000 99500000 512000 99% $2\"\n")
    (tmp_path / "bin" / "df").chmod(0o755)
    res = preflight("test", path)
    assert res.returncode == 1
    assert "GB of free disk at" in res.stderr and "found 0 GB" in res.stderr, res.stderr
    assert "lacks 1 requirement(s)" in res.stderr
    skipped = subprocess.run([str(PREFLIGHT), "test"], capture_output=True, text=True, check=False, timeout=60,
                             env=dict(os.environ, PATH=path, PREFLIGHT_SKIP_DISK="1"))
    assert skipped.returncode == 0, skipped.stderr
