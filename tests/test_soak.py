"""CI smoke of stress/soak.py: a short soak (15 s, a few hundred churning
tenants, deadlines and client-side cancels) must pass every check but the
RSS growth, whose windows mean nothing that short (the 10-minute run checks it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
# Not importorskip: importing locust monkey-patches the whole process with
# gevent (threads, sockets, time), which breaks every test collected after it.
if importlib.util.find_spec("locust") is None:
    pytest.skip("the soak needs locust (the stress extra)", allow_module_level=True)

SOAK = Path(__file__).resolve().parent.parent / "stress" / "soak.py"


def test_a_short_soak_with_tenant_churn_loses_nothing(tmp_path):
    out = tmp_path / "summary.json"
    args = ["--minutes", "0.25", "--users", "12", "--tenants", "300", "--no-rss-check"]
    proc = subprocess.run(
        [sys.executable, str(SOAK), *args, "--json", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["failures"] == []
    assert summary["distinct_tenants"] >= 200
    assert summary["tenant_pools_evicted"] > 0 and summary["overflow_tenants_at_end"] == 0
    assert summary["outcomes"].get("200", 0) > 0 and summary["outcomes"].get("cancel", 0) > 0
    assert summary["invariant_checks"] >= 10
