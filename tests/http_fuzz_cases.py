"""Fuzzed HTTP requests for the demo service, shared by tests/test_service_fuzz.py
(in-process, raw ASGI) and stress/fuzz_http.py (a uvicorn process, raw sockets).

``requests()`` draws a ``FuzzRequest``: a method, a path, a query string,
headers (bytes, so any value: empty, unicode, control characters, very long),
a body in chunks, and the stage at which the client hangs up. Bodies are
valid queries, mutations of one (truncated, invalid UTF-8, NaN / Infinity
literals, huge numbers, wrong types at an item or at "query", duplicate keys,
wrong lengths), deep nesting of arrays and objects, sizes around the 64 KiB
limit, and random bytes. ``allowed(req)`` is the oracle: the statuses a
correct service may answer.
"""

from __future__ import annotations

import dataclasses
import json

from hypothesis import strategies as st

DIM = 256
MAX_BODY = 64 * 1024
# Disconnect stages: never; before any body; after some chunks; right after
# the body (the job queued or running); once the response has started.
STAGES = ("none", "before-body", "mid-body", "after-body", "during-response")
SERVER_ERRORS_DOCUMENTED = frozenset((503, 504))  # overload/closing, expired deadline


@dataclasses.dataclass
class FuzzRequest:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]
    stage: str = "none"
    stage_chunk: int = 0  # mid-body: hang up after this many chunks
    valid: bool = False  # a well-formed /score request: must be answered 200 (or 503/504)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def describe(self) -> str:
        body = self.body
        shown = body[:120] + (b"..." if len(body) > 120 else b"")
        heads = [(k, v[:60]) for k, v in self.headers]
        return (
            f"{self.method} {self.path!r}?{self.query[:80]!r} stage={self.stage}/{self.stage_chunk} "
            f"headers={heads} body[{len(body)} in {len(self.chunks)} chunks]={shown!r}"
        )


def allowed(status: int) -> bool:
    """A correct service never answers 5xx except the documented 503 and 504."""
    return 100 <= status < 500 or status in SERVER_ERRORS_DOCUMENTED


# -- bodies -----------------------------------------------------------------

finite = st.one_of(
    st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False),
    st.integers(-(10**6), 10**6),
)
valid_vectors = st.lists(finite, min_size=DIM, max_size=DIM)


def encode(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@st.composite
def valid_bodies(draw: st.DrawFn) -> bytes:
    doc: dict[str, object] = {"query": draw(valid_vectors)}
    if draw(st.booleans()):
        doc["extra"] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=8)))
    return encode(doc)


BAD_ITEMS = (
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e39", "1" + "0" * 400, "true", "false",
    "null", '"1"', '""', "[]", "[1]", "{}", '{"a":1}', "1e-400", "-0", "0.0e0",
)  # fmt: skip
BAD_QUERIES = (
    "null", "1", '"abc"', "{}", "[]", "true", "[[1,2]]", '{"query":[1]}',
)  # fmt: skip


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    items = [json.dumps(x) for x in draw(valid_vectors)]
    kind = draw(st.sampled_from(("item", "length", "query", "dup", "truncate", "byte", "wrap")))
    if kind == "item":
        for _ in range(draw(st.integers(1, 3))):
            items[draw(st.integers(0, DIM - 1))] = draw(st.sampled_from(BAD_ITEMS))
    elif kind == "length":
        n = draw(st.sampled_from((0, 1, DIM - 1, DIM + 1, 2 * DIM)))
        items = (items * 2)[:n]
    body = ('{"query":[' + ",".join(items) + "]}").encode()
    if kind == "query":
        body = ('{"query":' + draw(st.sampled_from(BAD_QUERIES)) + "}").encode()
    elif kind == "dup":
        other = draw(st.sampled_from(BAD_QUERIES))
        first = draw(st.booleans())
        pair = (body[1:-1].decode(), f'"query":{other}')
        body = ("{" + ",".join(pair if first else pair[::-1]) + "}").encode()
    elif kind == "truncate":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif kind == "byte":
        at = draw(st.integers(0, len(body) - 1))
        junk = draw(st.sampled_from((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\u", b"'")))
        body = body[:at] + junk + body[at + 1 :]
    elif kind == "wrap":
        body = b"[" + body + b"]"
    return body


@st.composite
def nested_bodies(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from((1, 2, 31, 32, 33, 100, 1000, 5000, 20000, 40000)))
    kind = draw(st.sampled_from(("array", "object", "mixed", "in-query", "open")))
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "mixed":
        return b'[{"a":' * depth + b"1" + b"}]" * depth
    if kind == "in-query":
        return b'{"query":' + b"[" * depth + b"]" * depth + b"}"
    return b"[" * depth  # never closed


@st.composite
def sized_bodies(draw: st.DrawFn) -> bytes:
    valid = draw(valid_bodies())
    target = draw(st.sampled_from((MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 4 * MAX_BODY)))
    return valid + b" " * max(0, target - len(valid))


bodies = st.one_of(
    valid_bodies(),
    mutated_bodies(),
    nested_bodies(),
    sized_bodies(),
    st.just(b""),
    st.binary(max_size=300),
    st.text(max_size=100).map(str.encode),
)


def is_valid_body(body: bytes) -> bool:
    """Whether the service must accept this body (a duplicate "query" key
    keeps the last, as ``json.loads`` does)."""
    if len(body) > MAX_BODY:
        return False
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(doc, dict) or not isinstance(doc.get("query"), list):
        return False
    q = doc["query"]
    return len(q) == DIM and all(type(x) in (int, float) and abs(x) < 3e38 for x in q)


# -- headers ----------------------------------------------------------------

valid_tenants = st.one_of(
    st.sampled_from(("acme", "a", "default", "t-1", "x.y:z_w")),
    st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
)
odd_tenants = st.one_of(
    st.just(b""),
    st.text(min_size=1, max_size=70).map(str.encode),  # unicode, spaces, slashes
    st.binary(min_size=1, max_size=70),  # control characters, invalid UTF-8
    st.sampled_from((b"a" * 64, b"a" * 65, b"x" * 8192, b"a\r\nX-Evil: 1", b"a\x00b", b" a")),
)
NUMBERS = (
    "0", "1", "-1", "5", "2147483647", "2147483648", "-2147483649", "1e400", "nan", "inf",
    "-inf", "0.001", "1.5", " 3 ", "", "abc", "0x10", "1_000", "٣", "1e-320", "1e308",
)  # fmt: skip
CONTENT_TYPES = (
    b"application/json", b"text/plain", b"application/json; charset=latin-1",
    b"multipart/form-data; boundary=x", b"", b"\xff\xfe",
)  # fmt: skip


@st.composite
def header_sets(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Headers, and whether they are all acceptable ones."""
    headers: list[tuple[bytes, bytes]] = [(b"host", b"fuzz")]
    ok = True
    ct = draw(st.none() | st.sampled_from(CONTENT_TYPES))
    if ct is not None:
        headers.append((b"content-type", ct))
    if draw(st.booleans()):
        if draw(st.booleans()):
            headers.append((b"x-tenant", draw(valid_tenants).encode()))
        else:
            tenant = draw(odd_tenants)
            headers.append((b"x-tenant", tenant))
            ok = tenant == b""  # empty: the default tenant
    for name in (b"x-priority", b"x-timeout"):
        if draw(st.integers(0, 3)) == 0:
            value = draw(st.sampled_from(NUMBERS))
            headers.append((name, value.encode()))
            ok = False  # some are fine, some not: no expectation
    for _ in range(draw(st.integers(0, 2))):
        headers.append(
            (draw(st.sampled_from((b"x-junk", b"accept", b"x-forwarded-for", b"expect"))),
             draw(st.binary(max_size=40)))
        )  # fmt: skip
    return headers, ok


PATHS = (
    "/score", "/score", "/score", "/score", "/score", "/score", "/score/", "//score", "/stats", "/metrics", "/health",
    "/", "/nope", "/score%00", "/%ff", "/ünï", "/" + "a" * 3000, "/docs", "/openapi.json",
)  # fmt: skip
METHODS = (
    "POST",
    "POST",
    "POST",
    "POST",
    "POST",
    "POST",
    "GET",
    "PUT",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "FOO",
)
QUERIES = (
    b"", b"", b"priority=1", b"priority=x", b"timeout=0.5", b"timeout=-1", b"timeout=nan",
    b"timeout=1e400", b"priority=99999999999", b"a=%ff", b"=&&=", b"priority=1&priority=2",
)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> FuzzRequest:
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from(PATHS))
    query = draw(st.sampled_from(QUERIES))
    headers, headers_ok = draw(header_sets())
    body = draw(bodies)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    stage = draw(st.sampled_from(STAGES))
    stage_chunk = draw(st.integers(0, max(0, len(chunks) - 1)))
    valid = (
        method == "POST"
        and path == "/score"
        and query in (b"", b"priority=1", b"timeout=0.5", b"priority=1&priority=2")
        and headers_ok
        and stage == "none"
        and is_valid_body(body)
    )
    return FuzzRequest(method, path, query, headers, chunks, stage, stage_chunk, valid)
