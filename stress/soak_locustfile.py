"""Locust scenario of the soak (``stress/soak.py``): tenant churn, deadlines,
client-side cancels and disconnects against the demo service.

Users (weights in brackets):

* ``ChurnUser`` [6]: ``POST /score`` for a tenant drawn from
  ``RAPTORS_SOAK_TENANTS`` names (most requests), so tenant pools are
  created and evicted all the time, or from a few regular tenants;
* ``DeadlineUser`` [2]: the same with a small start deadline (``X-Timeout``,
  0.2 to 5 ms), so some expire (504) in the tenant's pool or its batcher lane;
* ``CancelUser`` [2]: raw sockets, so the client hangs up at a chosen stage:
  part-way through the body, right after the body (the job queued or
  running), or after a short wait for the answer.

Every request ends as one outcome: its HTTP status, ``cancel`` (the client
hung up on purpose), ``timeout`` (no answer within ``RAPTORS_SOAK_CLIENT_TIMEOUT``)
or ``error:<type>`` (the connection failed otherwise). On exit the counts,
and the distinct tenants used, go to ``RAPTORS_SOAK_OUT`` as JSON.
"""

from __future__ import annotations

import collections
import json
import os
import random
import socket
import time

from locust import FastHttpUser, User, between, events, task

DIM = 256
TENANTS = int(os.environ.get("RAPTORS_SOAK_TENANTS", "5000"))
CLIENT_TIMEOUT = float(os.environ.get("RAPTORS_SOAK_CLIENT_TIMEOUT", "30"))
OUT = os.environ.get("RAPTORS_SOAK_OUT")
REGULAR = [f"regular-{i}" for i in range(8)]

_rng = random.Random(4321)
BODIES = [
    json.dumps({"query": [round(_rng.gauss(0.0, 1.0), 6) for _ in range(DIM)]}).encode()
    for _ in range(32)
]

outcomes: collections.Counter[str] = collections.Counter()
tenants_seen: set[str] = set()


def pick_tenant() -> str:
    tenant = random.choice(REGULAR) if random.random() < 0.2 else f"t{random.randrange(TENANTS)}"
    tenants_seen.add(tenant)
    return tenant


@events.quitting.add_listener
def _write_outcomes(environment, **_kw) -> None:
    if OUT:
        with open(OUT, "w", encoding="utf-8") as f:
            json.dump({"outcomes": dict(outcomes), "tenants": len(tenants_seen)}, f)


class _Scoring(FastHttpUser):
    abstract = True
    wait_time = between(0.0, 0.02)
    network_timeout = CLIENT_TIMEOUT
    connection_timeout = CLIENT_TIMEOUT

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Tenant": pick_tenant()}

    def post(self, name: str) -> None:
        with self.client.post(
            "/score",
            data=random.choice(BODIES),
            headers=self.headers(),
            name=name,
            catch_response=True,
        ) as resp:
            code = resp.status_code
            if code == 0:
                err = resp.error
                kind = "timeout" if "timed out" in str(err).lower() else type(err).__name__
                outcomes["timeout" if kind == "timeout" else f"error:{kind}"] += 1
                resp.failure(f"no answer: {err!r}")
                return
            outcomes[str(code)] += 1
            if code == 200:
                if len(resp.json().get("ids", ())) != 10:
                    outcomes["bad-answer"] += 1
                    resp.failure("wrong answer shape")
                else:
                    resp.success()
            elif code in (503, 504):
                resp.success()  # shed or expired: documented answers
            else:
                resp.failure(f"HTTP {code}")


class ChurnUser(_Scoring):
    weight = 6

    @task
    def score(self) -> None:
        self.post("/score [churn]")


class DeadlineUser(_Scoring):
    weight = 2
    wait_time = between(0.02, 0.1)  # a 504 comes back fast: keep them a minority

    def headers(self) -> dict[str, str]:
        h = super().headers()
        h["X-Timeout"] = f"{random.uniform(0.0002, 0.005):.6f}"
        return h

    @task
    def score(self) -> None:
        self.post("/score [deadline]")


class CancelUser(User):
    """Hangs up at a random stage; the request's outcome is ``cancel`` unless
    the whole answer arrived first (then its status)."""

    weight = 2
    wait_time = between(0.02, 0.1)

    def on_start(self) -> None:
        host = self.environment.host or "http://127.0.0.1:8000"
        hostport = host.split("//", 1)[-1].rstrip("/")
        name, _, port = hostport.partition(":")
        self.addr = (name, int(port or 80))

    @task
    def hang_up(self) -> None:
        body = random.choice(BODIES)
        head = (
            f"POST /score HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            f"X-Tenant: {pick_tenant()}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        stage = random.choice(("mid-body", "after-body", "waiting", "waiting"))
        start = time.perf_counter()
        outcome = "cancel"
        sock = socket.create_connection(self.addr, timeout=CLIENT_TIMEOUT)
        try:
            if stage == "mid-body":
                sock.sendall(head + body[: random.randrange(len(body))])
            else:
                sock.sendall(head + body)
                if stage == "waiting":
                    sock.settimeout(random.uniform(0.0005, 0.01))
                    data = b""
                    try:
                        while b"\r\n\r\n" not in data:
                            chunk = sock.recv(65536)
                            if not chunk:
                                break
                            data += chunk
                        if data.startswith(b"HTTP/1.1 "):
                            outcome = data[9:12].decode()
                    except TimeoutError:
                        pass
        except OSError as exc:
            outcome = f"error:{type(exc).__name__}"
        finally:
            sock.close()
        outcomes[outcome] += 1
        self.environment.events.request.fire(
            request_type="POST",
            name=f"/score [cancel {stage}]",
            response_time=(time.perf_counter() - start) * 1e3,
            response_length=0,
            exception=None if not outcome.startswith("error") else RuntimeError(outcome),
            context={},
        )
