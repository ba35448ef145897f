"""The benchmark CLI end to end, in a subprocess, on the real embedded model."""

from __future__ import annotations

import csv
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abstractcore.bench.bench_command import parse_config
from abstractcore.bench.report import QUERY_COLUMNS, SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "mlx_concurrency_benchmark.py"
TINY = ["--queries", "4", "--concurrency-levels", "1", "2", "--max-output-tokens", "4"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *args]


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def _one(out_dir: Path, suffix: str) -> Path:
    found = sorted(out_dir.glob(f"bench_*_{suffix}"))
    assert len(found) == 1, found
    return found[0]


def test_quick_mode_is_issue_3s_measurement() -> None:
    c = parse_config(["--quick"])
    assert (c.queries, c.levels, c.params.max_output_tokens, c.params.temperature) == (
        32,
        (1, 8, 32),
        64,
        0.0,
    )
    assert c.system_names == ["engine", "serial", "mlx-lm-server"]
    c = parse_config(["--quick", "--concurrency-levels", "4", "2", "2", "--compare"])
    assert c.levels == (2, 4) and c.system_names == ["engine"]
    c = parse_config(["--provider", "ollama", "--model", "qwen2.5:0.5b"])
    assert c.system_names == ["ollama"]  # MLX baselines only next to the MLX engine
    assert parse_config([]).system_names == ["engine", "serial", "mlx-lm-server"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--concurrency-levels", "0"], "--concurrency-levels: expected a positive integer"),
        (["--temperature", "hot"], "--temperature: expected a number"),
        (
            ["--prompts-file", "/nonexistent/prompts.json"],
            "prompts file not found: /nonexistent/prompts.json",
        ),
        (["--queries", "500"], "exceeds the 128 distinct prompts"),
        (["--scenario", "nope"], "unknown --scenario 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        _cli(*args, "--out-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "error:" in lines[0] and message in lines[0]
    assert proc.stdout == ""
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.mlx
@pytest.mark.slow
def test_tiny_sweep_writes_csvs_png_and_table(tmp_path: Path) -> None:
    proc = subprocess.run(
        _cli(*TINY, "--compare", "serial", "engine-stream", "--out-dir", str(tmp_path),
             "--progress-interval", "1"),
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "[engine c=1] level started: 4 queries" in proc.stderr

    summary = _read_csv(_one(tmp_path, "summary.csv"))
    assert summary[0] == SUMMARY_COLUMNS
    rows = [dict(zip(summary[0], r)) for r in summary[1:]]
    assert [(r["system"], r["concurrency"]) for r in rows] == [
        ("engine", "1"),
        ("engine", "2"),
        ("serial", "1"),
        ("serial", "2"),
        ("engine-stream", "1"),
        ("engine-stream", "2"),
    ]
    for r in rows:
        assert (r["completed"], r["errors"], r["complete"]) == ("4", "0", "true")
        assert int(r["output_tokens"]) > 0 and float(r["throughput_tok_s"]) > 0
        assert float(r["ttft_p50_s"]) > 0
    assert rows[0]["outside_model_share"] != ""  # the engine reports time inside next()

    queries = _read_csv(_one(tmp_path, "queries.csv"))
    assert queries[0] == QUERY_COLUMNS
    assert len(queries) - 1 == 3 * 2 * 4  # systems x levels x queries
    by_run: dict[tuple[str, str], set[str]] = {}
    for q in (dict(zip(queries[0], r)) for r in queries[1:]):
        assert q["error"] == "" and int(q["prompt_tokens"]) > 10
        assert 1 <= int(q["output_tokens"]) <= 4 and q["finish_reason"] in ("length", "stop")
        # agenerate (engine) and astream (engine-stream) both time the first token in the call
        assert 0 < float(q["ttft_s"]) <= float(q["duration_s"])
        by_run.setdefault((q["system"], q["concurrency"]), set()).add(q["prompt_id"])
    # same prompts for every system at a level; a fresh set of 4 at the next level
    assert by_run[("engine", "1")] == by_run[("serial", "1")] and len(by_run[("engine", "1")]) == 4
    assert by_run[("engine", "2")] == by_run[("serial", "2")]
    assert not by_run[("engine", "1")] & by_run[("engine", "2")]

    png = _one(tmp_path, "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
    from PIL import Image

    with Image.open(png) as img:
        img.verify()
        assert img.size[0] > 1000

    # the system column is as wide as its longest name ("engine-stream")
    assert re.search(r"\| system +\| conc \| queries \|", proc.stdout)
    assert re.search(r"\| engine +\|    1 \|     4/4 \|", proc.stdout)
    assert "engine/serial" in proc.stdout


def _server_children(pid: int) -> list[int]:
    """The mlx-lm server processes the benchmark ``pid`` started."""
    return [
        k for k in _children(pid) if b"mlx_lm.server" in Path(f"/proc/{k}/cmdline").read_bytes()
    ]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _wait_for_line(proc: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    """Read the child's stderr (unbuffered) until ``marker`` shows up; returns what was read."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while marker.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"never saw {marker!r}; stderr so far:\n{seen.decode()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"exited before {marker!r}; stderr:\n{seen.decode()}")
            seen += chunk
    return seen.decode()


@pytest.mark.mlx
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigint_writes_partial_results_and_stops_the_server(tmp_path: Path) -> None:
    args = ["--queries", "4", "--concurrency-levels", "2", "--max-output-tokens", "16"]
    proc = subprocess.Popen(
        _cli(*args, "--compare", "mlx-lm-server", "--out-dir", str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        early = _wait_for_line(proc, "[mlx-lm-server c=2] level started", timeout=240)
        servers = _server_children(proc.pid)
        assert servers, "mlx-lm's server should be a running child now"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        stdout, stderr = out.decode(), early + err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and "INTERRUPTED" in stdout
    for pid in servers:
        assert not Path(f"/proc/{pid}").exists(), "the server outlived the benchmark"

    summary = _read_csv(_one(tmp_path, "summary.csv"))
    rows = [dict(zip(summary[0], r)) for r in summary[1:]]
    assert [(r["system"], r["concurrency"], r["complete"]) for r in rows] == [
        ("engine", "2", "true"), ("mlx-lm-server", "2", "false"),
    ]  # fmt: skip
    queries = _read_csv(_one(tmp_path, "queries.csv"))
    assert sum(1 for r in queries[1:] if r[0] == "engine") == 4
    assert _one(tmp_path, "plot.png").stat().st_size > 0


def _alive(pid: int) -> bool:
    """True while ``pid`` runs: a zombie waiting to be reaped counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.mlx
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_the_benchmark_still_stops_the_server(tmp_path: Path) -> None:
    # SIGKILL runs no cleanup at all: only the kernel's parent-death signal can stop the child.
    args = ["--queries", "2", "--concurrency-levels", "1", "--max-output-tokens", "64"]
    proc = subprocess.Popen(
        _cli(*args, "--compare", "mlx-lm-server", "--out-dir", str(tmp_path)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    servers: list[int] = []
    try:
        # Interleaved order starts every system before the first level: the server is up.
        _wait_for_line(proc, "level started", timeout=240)
        servers = _server_children(proc.pid)
        assert servers, "mlx-lm's server should be a running child now"
        proc.kill()
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in servers), "the server outlived a SIGKILLed run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
