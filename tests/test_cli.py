"""python -m raptors: --help everywhere, demo, serve, and an end-to-end bench smoke run."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ENV = dict(os.environ)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raptors", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


@pytest.mark.parametrize("cmd", [[], ["serve"], ["bench"], ["demo"], ["capacity"]])
def test_help(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: python -m raptors" in r.stdout
    if cmd == ["bench"]:
        assert "--quick" in r.stdout and "--variants" in r.stdout
    if cmd == ["serve"]:
        assert "--port" in r.stdout and "--host" in r.stdout


def test_no_command_is_an_error():
    assert run().returncode == 2


def test_demo_runs_offline():
    r = run("demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "ran in priority order: ['high', 'mid', 'low']" in out
    assert "'doomed' status: cancelled" in out
    assert "queue full: QueueFull" in out
    assert "demo-compute" in out and "demo-serial" in out


def _free_port() -> int:
    from raptors.bench import free_port

    return free_port()


def test_serve_answers_and_stops_cleanly():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "raptors", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "POST",
            "/score",
            body=json.dumps({"query": [0.5] * 256}),
            headers={"Content-Type": "application/json", "X-Tenant": "cli"},
        )
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        assert resp.status == 200 and len(doc["ids"]) == 10
        conn.request("GET", "/stats")
        stats = json.loads(conn.getresponse().read())
        assert stats["pools"]["tenant-cli"]["completed"] == 1
        # The capacity planner reads the same /stats.
        report = run("capacity", f"http://127.0.0.1:{port}", "--target-wait-p99", "0.05")
        assert report.returncode == 0, report.stderr
        assert "pool 'tenant-cli'" in report.stdout and "threads needed 1" in report.stdout
        as_json = run("capacity", f"http://127.0.0.1:{port}/stats", "--json")
        assert as_json.returncode == 0, as_json.stderr
        (entry,) = [r for r in json.loads(as_json.stdout) if r["pool"] == "tenant-cli"]
        assert entry["threads_needed"] == 1 and entry["target_wait_p99"] == 0.05
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, out


def test_bench_quick_smoke(tmp_path):
    t0 = time.monotonic()
    r = run(
        "bench", "--quick", "--duration", "1", "--warmup", "0.3",
        "--variants", "raptors,noop", "--clients", "4", "--out", str(tmp_path),
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "req/s" in out and "health p99" in out
    lines = [ln for ln in out.splitlines() if ln.startswith(("raptors ", "noop "))]
    assert len(lines) == 2, out
    assert "same" in lines[0]
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert set(doc["summary"]) == {"raptors", "noop"}
    assert doc["summary"]["raptors"]["rps"] > 0
    assert doc["answers"]["raptors"] == "same"
    assert time.monotonic() - t0 < 60


def test_demo_dask_tours_a_local_cluster():
    pytest.importorskip("distributed")
    r = run("demo", "--dask", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "priority order: high and mid started first (one per worker), then low" in out
    assert "'doomed': cancelled" in out
    assert "queue full: QueueFull" in out
    assert "token cancelled a running 2,000^2 matmul: cancelled" in out
    assert "16 concurrent calls in" in out and "demo-dask" in out


def test_bench_dask_quick_smoke(tmp_path):
    pytest.importorskip("distributed")
    t0 = time.monotonic()
    r = run(
        "bench", "--dask", "--quick", "--duration", "1", "--warmup", "0.3",
        "--variants", "raptors-dask", "--clients", "4", "--out", str(tmp_path),
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dask: LocalCluster at tcp://" in r.stdout
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["answers"]["raptors-dask"] == "same"
    assert doc["summary"]["raptors-dask"]["rps"] > 0
    assert doc["settings"]["dask"] == {"workers": 2, "threads_per_worker": 1}
    assert time.monotonic() - t0 < 90


def test_bench_dask_variant_needs_a_cluster(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "RAPTORS_DASK_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-m", "raptors", "bench", "--variants", "raptors-dask",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert r.returncode != 0 and "needs --dask" in r.stderr
