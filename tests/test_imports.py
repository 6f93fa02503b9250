"""`import raptors` stays light: the optional integrations' dependencies are
imported only by the modules that need them."""

import subprocess
import sys

import pytest

HEAVY = ["fastapi", "starlette", "prometheus_client", "uvicorn", "matplotlib"]


@pytest.mark.parametrize("module", ["raptors", "raptors.batch"])
def test_importing_raptors_loads_no_optional_dependency(module):
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


def test_batcher_is_one_class_in_both_modules():
    pytest.importorskip("fastapi")
    import raptors.batch
    import raptors.fastapi

    assert raptors.fastapi.Batcher is raptors.batch.Batcher
