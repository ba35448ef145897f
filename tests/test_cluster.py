"""``abstractcore cluster``: two instances of the embedded model behind a real nginx, driven
by the official openai SDK; the generated nginx.conf; no process outlives ``cluster down``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from abstractcore.bench.cluster_bench import chat_completions_served
from abstractcore.bench.mlx_lm_server import free_port
from abstractcore.cluster import POLICIES, NginxNotFoundError, find_nginx, render_nginx_conf
from abstractcore.cluster.fleet import read_record

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run installs it)"
)


# ---------------------------------------------------------------------- nginx.conf
def test_affinity_hashes_keyed_requests_and_spreads_the_others(tmp_path: Path) -> None:
    conf = render_nginx_conf(["10.0.0.1:8000", "10.0.0.2:8000"], listen="127.0.0.1:8080",
                             policy="affinity", run_dir=tmp_path)  # fmt: skip
    assert "hash $http_x_prompt_cache_key consistent;" in conf
    assert re.search(r'map \$http_x_prompt_cache_key \$abstractcore_pool \{\s+""\s+'
                     r"abstractcore_spread;\s+default abstractcore_affinity;", conf)  # fmt: skip
    assert conf.count("server 10.0.0.1:8000 max_fails=2 fail_timeout=5s;") == 2
    retry = "proxy_next_upstream error timeout http_502 http_503 http_429 non_idempotent;"
    for line in ("proxy_buffering off;", "proxy_read_timeout 3600s;", retry):
        assert line in conf
    assert str(tmp_path.resolve()) in conf  # logs, pid and temp files stay in the run dir


@pytest.mark.parametrize("policy", ["round-robin", "least-conn"])
def test_other_policies_are_one_upstream(tmp_path: Path, policy: str) -> None:
    conf = render_nginx_conf(["a:1"], listen="127.0.0.1:1", policy=policy, run_dir=tmp_path)
    assert "hash " not in conf and "map " not in conf
    assert ("least_conn;" in conf) == (policy == "least-conn")
    with pytest.raises(ValueError, match="policy must be one of"):
        render_nginx_conf(["a:1"], listen="x:1", policy="random", run_dir=tmp_path)
    assert POLICIES == ("affinity", "round-robin", "least-conn")


def test_a_missing_nginx_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGINX", "/nonexistent/nginx")
    with pytest.raises(NginxNotFoundError, match="apt-get install nginx.*brew install nginx"):
        find_nginx()
    env = {**os.environ, "NGINX": "/nonexistent/nginx"}
    cmd = [sys.executable, "-m", "abstractcore", "cluster", "up", "--instances", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "apt-get install nginx" in done.stderr


# ---------------------------------------------------------------------- a real cluster
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any, embedded_model_dir: Path) -> Iterator[dict[str, Any]]:
    if NGINX is None:
        pytest.skip("nginx is not installed")
    run_dir = tmp_path_factory.mktemp("cluster")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "abstractcore",
        "cluster",
        "up",
        "--instances",
        "2",
        "--port",
        str(port),
        "--run-dir",
        str(run_dir),
        "--grace-period",
        "5",
        "--model",
        "smollm2-135m",
    ]  # fmt: skip (embedded_model_dir: the alias is pulled)
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert up.stdout is not None
    line = up.stdout.readline()  # printed once everything is ready
    assert line.startswith("abstractcore cluster: http://"), line
    record = read_record(run_dir)
    info = {"url": record.url, "record": record, "run_dir": run_dir, "up": up, "port": port}
    yield info
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    up.stdout.close()


def _client(url: str, key: str | None = None) -> Any:
    from openai import OpenAI

    headers = {"X-Prompt-Cache-Key": key} if key else None
    return OpenAI(base_url=f"{url}/v1", api_key="unused", default_headers=headers, max_retries=0)


@needs_nginx
@pytest.mark.mlx
def test_the_openai_sdk_through_nginx_streamed_and_not(cluster: dict[str, Any]) -> None:
    with _client(cluster["url"]) as client:
        msgs = [{"role": "user", "content": "Say hi."}]
        r = client.chat.completions.create(model="smollm2-135m", messages=msgs, max_tokens=6)
        assert r.choices[0].message.content
        stream = client.chat.completions.create(
            model="smollm2-135m", messages=msgs, max_tokens=6, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert httpx.get(f"{cluster['url']}/health").json()["status"] == "ok"


def _cancelled(upstreams: list[str]) -> int:
    return sum(
        int(httpx.get(f"http://{u}/health").json()["engine"]["cancelled"]) for u in upstreams
    )


@needs_nginx
@pytest.mark.mlx
def test_a_client_that_goes_away_cancels_the_generation_upstream(
    cluster: dict[str, Any],
) -> None:
    upstreams = cluster["record"].upstreams
    before = _cancelled(upstreams)
    body = {"messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 2000, "stream": True}  # fmt: skip
    with httpx.Client(base_url=cluster["url"], timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            assert any(line.startswith("data: {") for line in lines)  # tokens are flowing
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _cancelled(upstreams) == before:
        time.sleep(0.1)
    assert _cancelled(upstreams) == before + 1


@needs_nginx
@pytest.mark.mlx
def test_a_key_sticks_to_one_instance_and_keyless_requests_spread(
    cluster: dict[str, Any],
) -> None:
    upstreams = cluster["record"].upstreams
    before = [chat_completions_served(u) for u in upstreams]
    msgs = [{"role": "user", "content": "Count to three."}]
    with _client(cluster["url"], key="conversation-7") as keyed:
        for _ in range(4):
            keyed.chat.completions.create(model="smollm2-135m", messages=msgs, max_tokens=2)
    keyed_counts = [chat_completions_served(u) - b for u, b in zip(upstreams, before)]
    assert sorted(keyed_counts) == [0, 4], keyed_counts  # all four on one instance
    before = [chat_completions_served(u) for u in upstreams]
    with _client(cluster["url"]) as keyless, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: keyless.chat.completions.create(
            model="smollm2-135m", messages=msgs, max_tokens=8), range(8)))  # fmt: skip
    spread = [chat_completions_served(u) - b for u, b in zip(upstreams, before)]
    assert sum(spread) == 8 and min(spread) >= 1, spread  # least-conn used both


@needs_nginx
@pytest.mark.mlx
def test_killing_an_instance_loses_no_request_that_had_not_started(
    cluster: dict[str, Any],
) -> None:
    record = cluster["record"]
    result = subprocess.run(  # `cluster status` sees both instances up
        [sys.executable, "-m", "abstractcore", "cluster", "status", "--run-dir",
         str(cluster["run_dir"])], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.count(" ok ") == 2, result.stdout
    msgs = [{"role": "user", "content": "Write one sentence about rivers."}]

    def ask(i: int) -> str:
        with _client(cluster["url"], key=f"kill-{i}") as c:  # keys hash to both instances
            return (
                c.chat.completions.create(model="smollm2-135m", messages=msgs, max_tokens=24)
                .choices[0]
                .message.content
                or ""
            )

    with ThreadPoolExecutor(12) as pool:
        pending = [pool.submit(ask, i) for i in range(12)]
        time.sleep(1.0)  # the requests are in the instances' batches, none has answered yet
        os.kill(record.instance_pids[0], signal.SIGKILL)
        answers = [f.result(timeout=120) for f in pending]
    # nginx sent the dead instance's requests (and later ones) to the live one: whole answers
    assert all(answers), answers
    result = subprocess.run(
        [sys.executable, "-m", "abstractcore", "cluster", "status", "--run-dir",
         str(cluster["run_dir"])], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and " down " in result.stdout  # the dead one is reported


@needs_nginx
@pytest.mark.mlx
def test_cluster_down_stops_every_process(cluster: dict[str, Any]) -> None:
    record = cluster["record"]
    cmd = [sys.executable, "-m", "abstractcore", "cluster", "down", "--run-dir",
           str(cluster["run_dir"]), "--grace-period", "5"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    cluster["up"].wait(timeout=30)
    assert cluster["up"].returncode == 0
    deadline = time.monotonic() + 10
    pids = [record.owner_pid, record.nginx_pid, *record.instance_pids]
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    assert not (cluster["run_dir"] / "cluster.json").exists()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


# ---------------------------------------------------------------------- the full sweep
@needs_nginx
@pytest.mark.mlx
def test_a_cut_full_sweep_keeps_its_rows_and_ranks_them(tmp_path: Path) -> None:
    cmd = [sys.executable, "examples/mlx_concurrency_benchmark.py", "--full-sweep",
           "--instances", "1", "--max-batch-sizes", "4", "8", "--prefill-batch-sizes", "4",
           "--concurrency-levels", "1", "2", "--queries", "2", "--max-output-tokens", "4",
           "--out-dir", str(tmp_path), "--progress-interval", "1"]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    mark = f"sweep-{os.getpid()}-{time.time_ns()}"  # inherited by every process it starts
    env = {**os.environ, "ABSTRACTCORE_TEST_MARK": mark}
    run = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        rows: list[str] = []
        while time.monotonic() < deadline and len(rows) < 3:  # header + the first cell's 2 rows
            found = list(tmp_path.glob("*_sweep.csv"))
            rows = found[0].read_text().splitlines() if found else []
            time.sleep(0.2)
        assert len(rows) >= 3, rows
        run.send_signal(signal.SIGINT)  # during the second cell
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, out.decode()[-2000:]
    (sweep,) = tmp_path.glob("*_sweep.csv")
    header, *data = [line.split(",") for line in sweep.read_text().splitlines()]
    assert header[:4] == ["instances", "max_batch_size", "prefill_batch_size", "concurrency"]
    assert [(r[1], r[3]) for r in data[:2]] == [("4", "1"), ("4", "2")]
    assert all(float(r[header.index("throughput_tps")]) > 0 for r in data[:2])
    assert not _processes_marked(mark)
    bench_top = [sys.executable, "-m", "abstractcore", "bench", "top", str(sweep)]
    top = subprocess.run([*bench_top, "--field", "throughput_tps", "--count", "1"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert top.returncode == 0 and len(top.stdout.strip().splitlines()) == 3  # header, rule, 1
    missing = subprocess.run([*bench_top, "--field", "nope"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "no column 'nope'" in missing.stderr


def _processes_marked(mark: str) -> list[str]:
    """Live processes whose environment holds ``ABSTRACTCORE_TEST_MARK=mark`` (Linux)."""
    needle = f"ABSTRACTCORE_TEST_MARK={mark}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found
