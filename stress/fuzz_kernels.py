"""Long fuzzing run of every kernel, constructor and rp.Array method against NumPy.

    python stress/fuzz_kernels.py --examples 100000 [--seed N] [--max-minutes M] [--chunk C]
        [--failures FILE]

Same strategies and property as tests/test_fuzz_kernels.py (tests/fuzz_cases.py): typed errors
only, NumPy's answer wherever Raptors answers, inputs unchanged. Examples run in chunks, each a
hypothesis run of `--chunk` examples with its own seed (seed, seed + 1, ...), generation only:
a failing example is recorded and printed (with the seed of its chunk), not shrunk, and the run
goes on. It stops after `--examples` examples or `--max-minutes`, whichever comes first, and
prints one summary line; the exit status is 1 when any example failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzz_cases import Failure, cases, check_call
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=60.0)
    parser.add_argument("--chunk", type=int, default=2000, help="examples per hypothesis run")
    parser.add_argument("--show", type=int, default=20, help="failures printed in full")
    parser.add_argument("--failures", type=Path, help="write every failure here (JSON lines)")
    args = parser.parse_args()

    start = time.monotonic()
    deadline = start + args.max_minutes * 60.0
    ran = 0
    errors: collections.Counter[str] = collections.Counter()
    failures: list[tuple[int, str, str]] = []
    kinds: collections.Counter[str] = collections.Counter()
    stopped_by_time = False
    seen: collections.Counter[str] = collections.Counter()

    class OutOfTime(Exception):
        pass

    chunk_index = 0
    while ran < args.examples:
        if time.monotonic() >= deadline:
            stopped_by_time = True
            break
        chunk_seed = args.seed + chunk_index
        chunk_index += 1
        todo = min(args.chunk, args.examples - ran)

        @hypothesis_seed(chunk_seed)
        @settings(
            max_examples=todo,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases())
        def run(case: object) -> None:
            nonlocal ran
            chunk_seed_now = chunk_seed  # noqa: B023 - run() is called in this iteration
            if time.monotonic() >= deadline:
                raise OutOfTime
            ran += 1
            kinds[f"{case.kind}"] += 1  # type: ignore[attr-defined]
            try:
                outcome = check_call(case)  # type: ignore[arg-type]
            except Failure as exc:
                failures.append((chunk_seed_now, repr(case), f"{exc}"))
                group = str(exc).split(":")[0][:40]
                seen[group] += 1
                if len(failures) <= args.show and seen[group] <= 2:
                    print(
                        f"FAIL (chunk seed {chunk_seed_now}): {case!r:.1500}\n    {exc!s:.1500}",
                        flush=True,
                    )
                return
            except Exception as exc:  # noqa: BLE001 - a bug in the harness: report, keep going
                failures.append((chunk_seed_now, repr(case), f"harness: {exc!r}"))
                if len(failures) <= args.show:
                    print(f"HARNESS ERROR (chunk seed {chunk_seed_now}): {case!r}", flush=True)
                    traceback.print_exc()
                return
            errors[outcome or "ok"] += 1

        try:
            run()
        except OutOfTime:
            stopped_by_time = True
            break

    seconds = time.monotonic() - start
    ok = errors.pop("ok", 0)
    by_type = ", ".join(f"{name} {count}" for name, count in sorted(errors.items())) or "none"
    mix = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    if args.failures is not None:
        with args.failures.open("w") as out:
            for chunk_seed, case, message in failures:
                out.write(json.dumps({"seed": chunk_seed, "case": case, "failure": message}) + "\n")
    if failures:
        groups = collections.Counter(msg.split(":")[0][:60] for _, _, msg in failures)
        print("failures by first words:")
        for text, count in groups.most_common():
            print(f"  {count:6d}  {text}")
    if stopped_by_time:
        print(f"stopped at --max-minutes {args.max_minutes}: ran {ran} of {args.examples} examples")
    print(
        f"fuzz_kernels: examples {ran} ({mix}), seconds {seconds:.1f}, seed {args.seed}, "
        f"succeeded {ok}, typed errors {sum(errors.values())} ({by_type}), "
        f"failures {len(failures)}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
