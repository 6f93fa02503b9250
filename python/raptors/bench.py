"""``python -m raptors bench``: the demo service in variants, side by side, under the same load.

Each variant runs in its own uvicorn process on 127.0.0.1 (a free port).
Before anything is measured every variant answers a fixed set of queries and
must agree with a float64 NumPy reference (the same top-10 ids, as a set
where scores tie within tolerance, and scores within tolerance). Then, for
each repeat and each variant in turn (interleaved, so machine noise spreads
evenly), two client processes start together:

* 16 keep-alive connections posting ``/score`` back to back (closed loop);
* one connection polling ``/health`` every 10 ms.

The first ``--warmup`` seconds are discarded. The table shows medians over
the repeats: req/s, ``/score`` p50/p99, ``/health`` p50/p99, errors, and the
CPU (in cores) the server and the ``/score`` client used in the window.
Variants suffixed ``:blas1`` run with ``OPENBLAS_NUM_THREADS=1``.

With ``--dask`` the bench first starts a ``distributed.LocalCluster`` on this
machine (``--dask-workers`` worker processes of ``--dask-threads`` threads,
``worker-saturation`` 1.0) and runs the ``raptors-dask`` variant against it:
the service's batches are scored on the cluster through a ``DaskPool``
(default variants then: ``raptors``, ``raptors-dask``, ``numpy-to-thread``).
The cluster shares the machine's cores with the server and the clients.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from raptors import service

DEFAULT_VARIANTS = (
    "raptors",
    "raptors-single",
    "numpy-inline",
    "numpy-to-thread",
    "numpy-def",
    "numpy-inline:blas1",
    "numpy-to-thread:blas1",
    "numpy-def:blas1",
    "noop",
)
DASK_VARIANTS = ("raptors", "raptors-dask", "numpy-to-thread")
SCORE_TOL = 1e-4
N_LOAD_QUERIES = 64
N_CHECK_QUERIES = 16


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    variant: str
    blas1: bool

    @classmethod
    def parse(cls, label: str) -> Variant:
        base, _, suffix = label.partition(":")
        if base not in service.VARIANTS or suffix not in ("", "blas1"):
            allowed = ", ".join(service.VARIANTS)
            raise ValueError(f"unknown variant {label!r} (known: {allowed}; suffix :blas1)")
        return cls(label, base, suffix == "blas1")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_line() -> dict[str, Any]:
    cpu = cpu_model()
    blas = "unknown"
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if infos:
            i = infos[0]
            blas = f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
    }


def format_query(q: np.ndarray) -> str:
    return json.dumps({"query": [float(f"{x:.7g}") for x in q.tolist()]}, separators=(",", ":"))


def check_queries(matrix: np.ndarray) -> list[np.ndarray]:
    """Random queries, a zero query (every score ties at 0) and a corpus row."""
    qs = list(service.make_queries(N_CHECK_QUERIES, matrix.shape[1], seed=service.SEED + 7))
    qs.append(np.zeros(matrix.shape[1], dtype=np.float32))
    qs.append(matrix[1234] * np.float32(2.0))
    return qs


def answer_problem(
    matrix64: np.ndarray, q: np.ndarray, ids: list[int], scores: list[float]
) -> str | None:
    """None when (ids, scores) is a correct top-10 for q; else what is wrong."""
    k = service.K
    norm = float(np.linalg.norm(q.astype(np.float64)))
    ref = matrix64 @ (q.astype(np.float64) / norm) if norm > 0 else np.zeros(len(matrix64))
    kth = float(np.sort(ref)[-k])
    if len(ids) != k or len(scores) != k or len(set(ids)) != k:
        return f"expected {k} distinct ids and {k} scores"
    if any(not 0 <= i < len(ref) for i in ids):
        return "id out of range"
    for i, s in zip(ids, scores, strict=True):
        if abs(ref[i] - s) > SCORE_TOL:
            return f"score of id {i}: {s} vs reference {ref[i]:.6f}"
        if ref[i] < kth - SCORE_TOL:
            return f"id {i} (score {ref[i]:.6f}) is not in the top {k} (10th {kth:.6f})"
    if any(a < b - SCORE_TOL for a, b in itertools.pairwise(scores)):
        return "scores are not best first"
    must = set(np.flatnonzero(ref > kth + SCORE_TOL).tolist())
    if not must <= set(ids):
        return f"missing ids {sorted(must - set(ids))}"
    return None


def http_json(port: int, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


class Server:
    """One variant's uvicorn process."""

    def __init__(self, v: Variant, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.variant = v
        self.port = free_port()
        env = dict(os.environ, **(extra_env or {}))
        if v.blas1:
            env["OPENBLAS_NUM_THREADS"] = "1"
        self.log_path = log_dir / f"server-{v.label.replace(':', '-')}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "raptors", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--variant", v.variant]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.variant.label}: server exited with {self.proc.returncode}; "
                    f"see {self.log_path}:\n{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_json(self.port, "GET", "/health")[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.variant.label}: server not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_load(
    server: Server, requests_file: Path, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    start_at = time.time() + 0.5
    common = ["--port", str(server.port), "--start-at", repr(start_at)]
    common += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    lg = [sys.executable, "-m", "raptors._loadgen"]
    score = subprocess.Popen(
        [*lg, "score", *common, "--clients", str(args.clients), "--requests", str(requests_file),
         "--server-pid", str(server.proc.pid)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    health = subprocess.Popen(
        [*lg, "health", *common, "--interval", str(args.health_interval)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    total = 0.5 + args.warmup + args.duration
    t0 = time.monotonic()
    tty = sys.stdout.isatty()
    limit = total + 60.0
    mid = 0.5 + args.warmup + args.duration / 2
    pool_stats = None
    while score.poll() is None or health.poll() is None:
        elapsed = time.monotonic() - t0
        if pool_stats is None and elapsed >= mid:
            # One snapshot of the pools mid-window, under load (for capacity planning).
            try:
                pool_stats = http_json(server.port, "GET", "/stats")[1]
            except (OSError, http.client.HTTPException, ValueError) as exc:
                pool_stats = {"error": repr(exc)}
        if elapsed > limit:
            score.kill()
            health.kill()
            raise RuntimeError(f"{tag}: load generator did not finish in {limit:.0f} s")
        if tty:
            phase = "warm-up" if elapsed < 0.5 + args.warmup else "measuring"
            print(
                f"\r  {tag}: {phase} {min(elapsed, total):4.1f}/{total:.1f} s ", end="", flush=True
            )
        time.sleep(0.25)
    outs = []
    for name, proc in (("score", score), ("health", health)):
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(
                f"{tag}: {name} client failed: {err.decode(errors='replace')[-2000:]}"
            )
        outs.append(json.loads(out))
    result = {"score": outs[0], "health": outs[1], "pool_stats": pool_stats}
    if tty:
        print("\r", end="")
    print(
        f"  {tag}: {outs[0]['rps']:8.0f} req/s  /score p99 {_ms(outs[0]['p99_ms'])} ms  "
        f"/health p99 {_ms(outs[1]['p99_ms'])} ms  errors {outs[0]['errors'] + outs[1]['errors']}",
        flush=True,
    )
    return result


def _ms(v: float | None) -> str:
    return "   n/a" if v is None else f"{v:6.2f}"


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": _median([r["score"]["rps"] for r in runs]),
        "score_p50_ms": _median([r["score"]["p50_ms"] for r in runs]),
        "score_p99_ms": _median([r["score"]["p99_ms"] for r in runs]),
        "health_p50_ms": _median([r["health"]["p50_ms"] for r in runs]),
        "health_p99_ms": _median([r["health"]["p99_ms"] for r in runs]),
        "errors": int(sum(r["score"]["errors"] + r["health"]["errors"] for r in runs)),
        "server_cpu": _median([r["score"]["server_cpu"] for r in runs]),
        "client_cpu": _median([r["score"]["client_cpu"] for r in runs]),
        "health_client_cpu": _median([r["health"]["client_cpu"] for r in runs]),
    }


def format_table(summary: dict[str, dict[str, Any]], answers: dict[str, str]) -> str:
    ref = summary.get("raptors", {}).get("rps")
    head = (
        f"{'variant':<22} {'req/s':>8} {'vs rp':>6} {'score p50':>9} {'score p99':>9} "
        f"{'health p50':>10} {'health p99':>10} {'errors':>6} {'srv cpu':>7} {'cli cpu':>7}  answers"
    )
    lines = [head, "-" * len(head)]

    def f(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    for label, s in summary.items():
        rel = f(s["rps"] / ref, ".2f") if ref and s["rps"] is not None else "n/a"
        lines.append(
            f"{label:<22} {f(s['rps'], '.0f'):>8} {rel:>6} {f(s['score_p50_ms'], '.2f'):>9} "
            f"{f(s['score_p99_ms'], '.2f'):>9} {f(s['health_p50_ms'], '.2f'):>10} "
            f"{f(s['health_p99_ms'], '.2f'):>10} {s['errors']:>6} {f(s['server_cpu'], '.2f'):>7} "
            f"{f(s['client_cpu'], '.2f'):>7}  {answers.get(label, '')}"
        )
    lines.append("latencies in ms; cpu in cores used during the measured window; "
                 "'vs rp' = req/s relative to the raptors variant")  # fmt: skip
    return "\n".join(lines)


def write_chart(summary: dict[str, dict[str, Any]], path: Path, title: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    labels = list(summary)
    panels = (
        ("rps", "/score req/s (higher is better)"),
        ("score_p99_ms", "/score p99 ms"),
        ("health_p99_ms", "/health p99 ms while /score is saturated"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5))
    for ax, (key, name) in zip(axes, panels, strict=True):
        vals = [summary[v][key] or 0.0 for v in labels]
        colors = ["#d1495b" if v == "raptors" else "#8d99ae" for v in labels]
        ax.barh(labels, vals, color=colors)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=10)
        for y, val in enumerate(vals):
            ax.text(
                val, y, f" {val:.0f}" if key == "rps" else f" {val:.1f}", va="center", fontsize=8
            )
        ax.margins(x=0.2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.repeats = 1
        args.duration = args.duration if args.duration_given else 3.0
        args.warmup = args.warmup if args.warmup_given else 1.0
    if args.variants is None:
        args.variants = ",".join(DASK_VARIANTS if args.dask else DEFAULT_VARIANTS)
    variants = [Variant.parse(v.strip()) for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise SystemExit("no variants")
    wants_dask = any(v.variant == "raptors-dask" for v in variants)
    if wants_dask and not args.dask and not os.environ.get("RAPTORS_DASK_ADDRESS"):
        raise SystemExit("the raptors-dask variant needs --dask (or RAPTORS_DASK_ADDRESS)")
    with contextlib.ExitStack() as stack:
        extra_env: dict[str, str] = {}
        if args.dask and wants_dask:
            address = stack.enter_context(_local_cluster(args.dask_workers, args.dask_threads))
            extra_env["RAPTORS_DASK_ADDRESS"] = address
            print(f"dask: LocalCluster at {address}, {args.dask_workers} worker process(es) x "
                  f"{args.dask_threads} thread(s)", flush=True)  # fmt: skip
        return _run(args, variants, extra_env)


@contextlib.contextmanager
def _local_cluster(workers: int, threads: int) -> Iterator[str]:
    """A LocalCluster of worker processes on this machine; yields its address."""
    try:
        from raptors.dask import local_cluster
    except ImportError:
        raise SystemExit('--dask needs the extra: pip install "raptors[dask]"') from None
    with local_cluster(workers, threads) as cluster:
        yield cluster.scheduler_address


def _run(args: argparse.Namespace, variants: list[Variant], extra_env: dict[str, str]) -> int:
    if not (0 < args.duration <= 600) or args.repeats < 1 or not (1 <= args.clients <= 256):
        raise SystemExit("need 0 < duration <= 600, repeats >= 1, 1 <= clients <= 256")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"NumPy {machine['numpy']}, BLAS {machine['blas']} "
        f"(OPENBLAS_CORETYPE={machine['openblas_coretype']})"
    )
    print(
        f"load: {args.clients} clients posting /score + /health every "
        f"{args.health_interval * 1e3:.0f} ms; warm-up {args.warmup:g} s, {args.duration:g} s "
        f"measured, {args.repeats} repeat(s), variants: {', '.join(v.label for v in variants)}",
        flush=True,
    )

    matrix = service.make_matrix()
    matrix64 = matrix.astype(np.float64)
    load_bodies = [format_query(q) for q in service.make_queries(N_LOAD_QUERIES)]
    checks = [format_query(q) for q in check_queries(matrix)]
    check_vectors = [np.array(json.loads(b)["query"], dtype=np.float32) for b in checks]

    answers: dict[str, str] = {}
    runs: dict[str, list[dict[str, Any]]] = {v.label: [] for v in variants}
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="raptors-bench-") as tmp:
        requests_file = Path(tmp) / "requests.json"
        requests_file.write_text(json.dumps({"bodies": load_bodies}))
        try:
            for v in variants:
                print(f"starting {v.label} ...", flush=True)
                server = Server(v, out_dir, extra_env)
                servers.append(server)
                server.wait_ready()
                answers[v.label] = verify_answers(server.port, v, checks, check_vectors, matrix64)
                print(f"  {v.label}: port {server.port}, answers: {answers[v.label]}", flush=True)
            for rep in range(args.repeats):
                for server in servers:
                    tag = f"[{rep + 1}/{args.repeats}] {server.variant.label}"
                    runs[server.variant.label].append(run_load(server, requests_file, args, tag))
        finally:
            for server in servers:
                server.stop()

    summary = {label: summarize(r) for label, r in runs.items()}
    table = format_table(summary, answers)
    print()
    print(table)
    title = (
        f"raptors bench: {args.clients} clients, {args.duration:g} s x {args.repeats}, "
        f"{machine['cpu']} ({machine['cores']} cores), NumPy {machine['numpy']}, {machine['blas']}"
    )
    print(write_chart(summary, out_dir / "bench.png", title))
    result = {
        "command": " ".join(["python -m raptors bench", *args.argv]),
        "machine": machine,
        "settings": {
            "dask": (
                {"workers": args.dask_workers, "threads_per_worker": args.dask_threads}
                if extra_env
                else None
            ),
            "clients": args.clients,
            "duration": args.duration,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "health_interval": args.health_interval,
        },
        "answers": answers,
        "summary": summary,
        "runs": runs,
        "table": table,
    }
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"results: {out_dir / 'bench.json'}")
    wrong = [label for label, a in answers.items() if a not in ("same", "not checked")]
    if wrong:
        print(f"WRONG ANSWERS: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def verify_answers(
    port: int, v: Variant, bodies: list[str], vectors: list[np.ndarray], matrix64: np.ndarray
) -> str:
    if v.variant == "noop":
        return "not checked"
    for body, q in zip(bodies, vectors, strict=True):
        status, doc = http_json(port, "POST", "/score", body)
        if status != 200:
            return f"HTTP {status}: {doc}"
        problem = answer_problem(matrix64, q, doc["ids"], doc["scores"])
        if problem is not None:
            return f"DIFFERENT ({problem})"
    return "same"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="1 repeat, 3 s measured after 1 s warm-up (about a minute)")  # fmt: skip
    p.add_argument("--duration", type=float, default=None, help="measured seconds per run (10)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per run (2)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the table shows medians (3)")
    p.add_argument("--clients", type=int, default=16, help="concurrent /score connections (16)")
    p.add_argument("--health-interval", type=float, default=0.010,
                   help="seconds between /health polls (0.010)")  # fmt: skip
    p.add_argument("--dask", action="store_true",
                   help="start a LocalCluster on this machine and bench the raptors-dask "
                        "variant on it (needs the dask extra)")  # fmt: skip
    p.add_argument("--dask-workers", type=int, default=2,
                   help="--dask: worker processes (2)")  # fmt: skip
    p.add_argument("--dask-threads", type=int, default=1,
                   help="--dask: threads per worker (1)")  # fmt: skip
    p.add_argument("--variants", default=None,
                   help="comma-separated (default: all but raptors-dask; with --dask: "
                   + ",".join(DASK_VARIANTS) + "); from: "
                   + ", ".join(service.VARIANTS) + " (suffix :blas1 for OPENBLAS_NUM_THREADS=1)")  # fmt: skip
    p.add_argument("--out", default="bench-results", help="directory for bench.json, bench.png")


def run_cli(args: argparse.Namespace, argv: list[str]) -> int:
    args.argv = argv
    args.duration_given = args.duration is not None
    args.warmup_given = args.warmup is not None
    if args.duration is None:
        args.duration = 10.0
    if args.warmup is None:
        args.warmup = 2.0
    try:
        return main(args)
    except RuntimeError as exc:  # a server or client process failed: say which, exit 1
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
