"""Locust scenario for the demo service: a noisy tenant and a quiet tenant.

Both tenants post ``/score`` with mixed priorities (``X-Priority``) and
client-side timeouts; the noisy tenant runs ``RAPTORS_NOISY_FACTOR`` (default
5) times as many users as the quiet one, each user at the same constant rate.
Request names carry the tenant (``/score [quiet]``) so locust's table is per
tenant. Run it through ``stress/run_locust.py``, which bounds the time and
binds everything to 127.0.0.1.

Environment: ``RAPTORS_QUIET_USERS`` (2), ``RAPTORS_NOISY_FACTOR`` (5),
``RAPTORS_USER_RPS`` (20 requests/s per user), ``RAPTORS_CLIENT_TIMEOUT``
(2.0 s).
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant_throughput, task

DIM = 256
QUIET_USERS = int(os.environ.get("RAPTORS_QUIET_USERS", "2"))
NOISY_FACTOR = int(os.environ.get("RAPTORS_NOISY_FACTOR", "5"))
USER_RPS = float(os.environ.get("RAPTORS_USER_RPS", "20"))
CLIENT_TIMEOUT = float(os.environ.get("RAPTORS_CLIENT_TIMEOUT", "2.0"))
PRIORITIES = (0, 0, 0, 1, 5)

_rng = random.Random(1234)
BODIES = [
    json.dumps({"query": [round(_rng.gauss(0.0, 1.0), 6) for _ in range(DIM)]}) for _ in range(32)
]


class _Tenant(FastHttpUser):
    abstract = True
    tenant = "default"
    wait_time = constant_throughput(USER_RPS)
    network_timeout = CLIENT_TIMEOUT
    connection_timeout = CLIENT_TIMEOUT

    @task
    def score(self) -> None:
        headers = {
            "Content-Type": "application/json",
            "X-Tenant": self.tenant,
            "X-Priority": str(random.choice(PRIORITIES)),
        }
        with self.client.post(
            "/score",
            data=random.choice(BODIES),
            headers=headers,
            name=f"/score [{self.tenant}]",
            catch_response=True,
        ) as resp:
            if resp.status_code == 503:
                resp.failure("503 shed (queue full)")
            elif resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif len(resp.json().get("ids", ())) != 10:
                resp.failure("wrong answer shape")


class QuietTenant(_Tenant):
    tenant = "quiet"
    fixed_count = QUIET_USERS


class NoisyTenant(_Tenant):
    tenant = "noisy"
    fixed_count = QUIET_USERS * NOISY_FACTOR
