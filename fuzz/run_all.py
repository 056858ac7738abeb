"""Runs every fuzz target for a short while: ``python fuzz/run_all.py --seconds 10``.

A target is a module ``fuzz/targets/fuzz_<name>.py`` that defines ``target(data: bytes) -> None`` and
``EXPECTED``, the tuple of documented exceptions its parser may raise. The contract (websockets'
fuzzing/): every input either parses or raises one of ``EXPECTED``; anything else is a bug.

Each target first replays its checked-in corpus (``fuzz/corpus/<name>/``), then fuzzes with atheris
(coverage-guided, in a subprocess) where it is installed, else with hypothesis over arbitrary bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "targets"
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
# Targets build their fixtures with tests/support.py.
sys.path.insert(0, str(HERE.parent))


def load(name: str) -> ModuleType:
    path = TARGETS / f"fuzz_{name}.py"
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def names() -> list[str]:
    return sorted(p.stem.removeprefix("fuzz_") for p in TARGETS.glob("fuzz_*.py"))


def check(module: ModuleType, data: bytes) -> None:
    with contextlib.suppress(*module.EXPECTED):
        module.target(data)


def replay_corpus(name: str, module: ModuleType) -> int:
    count = 0
    for path in sorted((CORPUS / name).glob("*")):
        check(module, path.read_bytes())
        count += 1
    return count


def run_hypothesis(module: ModuleType, seconds: float) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:

        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.binary(max_size=4096))
        def one(data: bytes) -> None:
            check(module, data)

        one()
        runs += 200
    return runs


def run_atheris(name: str, seconds: int, scratch: str) -> None:
    import atheris  # only in the child process

    with atheris.instrument_imports():
        module = load(name)
    # libFuzzer writes new inputs into the first corpus directory: keep the checked-in one read-only.
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        "-rss_limit_mb=2048",
        "-max_len=8192",
        scratch,
    ]
    corpus = CORPUS / name
    if corpus.is_dir():
        args.append(str(corpus))
    atheris.Setup(args, lambda data: check(module, data))
    atheris.Fuzz()


def have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="per target")
    parser.add_argument("--only", help="run one target")
    parser.add_argument("--atheris-child", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.atheris_child:
        sys.argv = [sys.argv[0]]
        run_atheris(args.atheris_child, args.seconds, args.scratch)
        return 0
    failed = []
    for name in [args.only] if args.only else names():
        module = load(name)
        replayed = replay_corpus(name, module)
        if have_atheris():
            with tempfile.TemporaryDirectory(prefix=f"kluis-fuzz-{name}-") as scratch:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--atheris-child",
                        name,
                        "--seconds",
                        str(args.seconds),
                        "--scratch",
                        scratch,
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
            ok = proc.returncode == 0
            engine = "atheris"
            if not ok:
                print(proc.stderr[-4000:], file=sys.stderr)
        else:
            run_hypothesis(module, args.seconds)
            ok, engine = True, "hypothesis"
        print(f"fuzz {name}: corpus {replayed} inputs, {engine} {args.seconds}s: {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
