"""`abstractcore models ...`: run as a user would, in a subprocess, against the cached model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from abstractcore.cli import build_parser, main


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abstractcore", *args],
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.mlx
def test_pull_of_a_cached_model_prints_its_path(embedded_model_dir: Path) -> None:
    done = _cli("models", "pull", "smollm2-135m")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(embedded_model_dir)
    assert "download" not in done.stderr  # nothing fetched or converted again
    path = _cli("models", "path", "smollm2-135m")
    assert (path.returncode, path.stdout.strip()) == (0, str(embedded_model_dir))


def test_bad_name_is_a_one_line_error() -> None:
    done = _cli("models", "pull", "no-such-model")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: unknown model 'no-such-model'")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_bad_dtype_is_a_usage_error() -> None:
    done = _cli("models", "pull", "smollm2-135m", "--dtype", "int3")
    assert done.returncode == 2 and "invalid choice: 'int3'" in done.stderr


@pytest.mark.mlx
def test_pull_of_a_gguf_file_shows_progress(tmp_path: Path, embedded_gguf: Path) -> None:
    env = {"ABSTRACTCORE_CACHE_DIR": str(tmp_path)}
    missing = _cli("models", "path", str(embedded_gguf), "--dtype", "keep", env=env)
    assert missing.returncode == 1 and "abstractcore models pull" in missing.stderr
    done = _cli("models", "pull", str(embedded_gguf), "--dtype", "keep", env=env)
    assert done.returncode == 0, done.stderr
    out = Path(done.stdout.strip())
    assert out.parent == tmp_path / "models" and (out / "config.json").is_file()
    lines = done.stderr.splitlines()  # not a terminal: plain log lines, not a live display
    assert "convert: 100% (272/272)" in lines and "write: 100% (1/1)" in lines
    listing = _cli("models", "list", env=env)
    assert (
        listing.returncode == 0 and out.name in listing.stdout and "smollm2-135m" in listing.stdout
    )


def test_parser_has_the_models_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["models", "--help"])
    assert info.value.code == 0
    usage = capsys.readouterr().out
    assert all(cmd in usage for cmd in ("pull", "list", "path"))
    args = build_parser().parse_args(["models", "pull", "x.gguf", "--dtype", "float16", "--force"])
    assert (args.name, args.dtype, args.force) == ("x.gguf", "float16", True)
