"""/metrics under several worker processes: ``uvicorn --workers 2`` with
``PROMETHEUS_MULTIPROC_DIR`` set, load that lands on both workers, and
``/metrics`` from either one reporting the sum over both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import raptors
from prometheus_client.parser import text_string_to_metric_families

TESTS = Path(__file__).resolve().parent
PACKAGE_ROOT = Path(raptors.__file__).resolve().parent.parent
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def poll(what: str, check: Callable[[], Any], deadline: float = 30.0) -> Any:
    """``check()``'s first truthy result, retried until ``deadline`` seconds."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        try:
            result = check()
        except httpx.HTTPError as exc:  # not listening yet, or a worker restarting
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(0.02)
    raise AssertionError(f"{what}: not reached in {deadline} s (last: {last!r})")


def request(method: str, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request on a connection of its own, so that the kernel hands each
    one to whichever worker accepts it."""
    headers = {"Connection": "close", **(headers or {})}
    return httpx.request(method, url, headers=headers, timeout=10.0)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def pids_of(samples: Samples, name: str, **labels: str) -> set[int]:
    want = set(labels.items())
    return {int(dict(lab)["pid"]) for (n, lab) in samples if n == name and want <= set(lab)}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    from raptors.bench import free_port

    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    port = free_port()
    path = [str(PACKAGE_ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
    }
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "multiproc_app:app", "--workers", "2",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "info", "--no-access-log"],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", proc, multiproc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


def test_metrics_sum_over_two_uvicorn_workers(server):
    base, proc, multiproc = server
    poll("a worker answers", lambda: request("GET", f"{base}/metrics").is_success, 60.0)

    # Load that lands on both workers: each request on a new connection,
    # until both have served some (bounded in count and time).
    served: dict[int, int] = {}
    work = tenant = 0
    end = time.monotonic() + 60.0
    while (len(served) < 2 or min(served.values()) < 5 or work < 40) and work < 1000:
        assert time.monotonic() < end, f"load did not reach both workers: {served}"
        if (work + tenant) % 4 == 3:
            r = request("POST", f"{base}/tenant", headers={"X-Tenant": "acme"})
            tenant += 1
        else:
            r = request("POST", f"{base}/work")
            work += 1
        assert r.is_success, r.text
        pid = int(r.headers["X-Pid"])
        served[pid] = served.get(pid, 0) + 1
    assert len(served) == 2, f"one worker served everything: {served}"
    workers = set(served)

    # Every worker's refresh runs every 50 ms; /metrics from either worker
    # reports the sum over both, once both have written their last counts.
    answered: dict[int, Samples] = {}

    def scrape_both() -> bool:
        r = request("GET", f"{base}/metrics")
        samples = parse(r.text)
        if (
            value(samples, "raptors_jobs_completed_total", pool="work") == work
            and value(samples, "raptors_jobs_completed_total", tenant="acme") == tenant
        ):
            answered[int(r.headers["X-Pid"])] = samples
        return set(answered) == workers

    poll("both workers report the totals of both", scrape_both)
    for samples in answered.values():
        assert value(samples, "raptors_jobs_submitted_total", pool="work") == work
        assert value(samples, "raptors_jobs_rejected_total", pool="work") == 0
        # Amounts are summed over the live workers...
        assert value(samples, "raptors_pool_threads", pool="work") == 2
        assert value(samples, "raptors_pool_queue_capacity", pool="work") == 2 * 64
        assert value(samples, "raptors_budget_threads", budget="tenant-budget") == 2
        assert value(samples, "raptors_pool_queued", pool="work") == 0
        # ... ratios kept per worker (a pid label), quantiles as the max.
        assert pids_of(samples, "raptors_pool_utilization", pool="work") == workers
        assert pids_of(samples, "raptors_budget_utilization", budget="tenant-budget") <= workers
        assert ("raptors_job_wait_seconds", (
            ("budget", ""), ("pool", "work"), ("quantile", "0.99"), ("tenant", "")
        )) in samples  # fmt: skip
        # Every pool series is labelled with its pool, tenant and budget.
        acme = ("budget", "tenant-budget"), ("pool", "tenant-acme"), ("tenant", "acme")
        assert samples[("raptors_jobs_completed_total", acme)] == tenant
        assert pids_of(samples, "raptors_pool_share", **dict(acme)) <= workers
        assert pids_of(samples, "raptors_pool_share", **dict(acme))

    # A worker killed without a clean exit: its live gauges leave /metrics
    # (uvicorn starts a new worker), its counts stay in the totals.
    killed = min(workers)
    os.kill(killed, signal.SIGKILL)

    def dead_worker_gone() -> Samples | None:
        samples = parse(request("GET", f"{base}/metrics").text)
        live = pids_of(samples, "raptors_pool_utilization", pool="work")
        if killed in live or len(live) != 2:
            return None
        return samples

    samples = poll("the killed worker's gauges are gone", dead_worker_gone)
    assert value(samples, "raptors_jobs_completed_total", pool="work") == work
    assert value(samples, "raptors_pool_threads", pool="work") == 2

    # A clean shutdown: each worker writes its last counts and zeroes its gauges.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc))
    after = parse(generate_latest(registry).decode())
    assert value(after, "raptors_jobs_completed_total", pool="work") == work
    assert value(after, "raptors_pool_threads", pool="work") == 0
    assert value(after, "raptors_budget_threads") == 0


CHURN = r"""
import json, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from raptors.fastapi import Raptors, TenantTemplate

# No periodic refresh: tenant pools come and go between two writes.
rx = Raptors(tenants=TenantTemplate(budget_threads=1, max_tenants=1), metrics_interval=3600)
rx.open()
for tenant, jobs in [("acme", 5), ("other", 2), ("acme", 3), ("other", 1)]:
    pool = rx.tenants.get(tenant)  # evicts the other tenant's idle pool
    for _ in range(jobs):
        pool.submit(sum, [1]).result(timeout=10)
evicted = rx.tenants.evicted
live = rx.metrics_text().decode()
rx.close()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
after = generate_latest(registry).decode()
sys.stdout.write(json.dumps({"evicted": evicted, "live": live, "after": after}))
"""


def test_multiprocess_counts_survive_tenant_churn_and_shutdown(tmp_path):
    """Pools evicted before the periodic refresh ever saw them, a tenant's
    pool replaced by a new one of the same name, and the app's shutdown:
    every job is counted once."""
    import json

    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")] if p
        ),
    }
    out = subprocess.run(
        [sys.executable, "-c", CHURN],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["evicted"] == 3
    for text in (doc["live"], doc["after"]):
        samples = parse(text)
        assert value(samples, "raptors_jobs_completed_total", tenant="acme") == 8
        assert value(samples, "raptors_jobs_completed_total", tenant="other") == 3
        assert value(samples, "raptors_jobs_submitted_total", budget="tenant-budget") == 11
    live, after = parse(doc["live"]), parse(doc["after"])
    assert value(live, "raptors_pool_threads", tenant="other") == 1  # other's pool is open
    assert value(live, "raptors_pool_threads", tenant="acme") == 0  # acme's was evicted
    assert value(after, "raptors_pool_threads") == 0
    assert value(after, "raptors_budget_threads") == 0


def test_multiproc_dir_set_after_prometheus_client_was_imported(monkeypatch, tmp_path):
    from raptors.fastapi import Raptors

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="imported before"):
        Raptors()
