"""The same op benchmark against the peer library fla-core, in a separate process, and a side-by-side comparison.

fla-core is also imported as `fla`, so it must never share a process with ours. This script runs `bench_ops.py` in a
child process whose `fla` is the peer's: either another interpreter (`--python`, e.g. a venv with fla-core installed)
or ours with `--peer-path` put first on PYTHONPATH (a folder that holds the peer's `fla/` package, e.g. an unpacked
wheel or a `pip install --target` folder). It refuses to run if the child would import this repository's `fla`.

    pip install --no-deps --target /tmp/peer fla-core             # once, anywhere with the registry
    python benchmarks/peer_ops.py --peer-path /tmp/peer [--out DIR] [bench_ops options: --ops, --T, --dtype]
    python benchmarks/bench_ops.py [--out DIR] [same options]
    python benchmarks/peer_ops.py --compare DIR/bench_ops.csv DIR/peer_ops.csv   # ours / peer (goal <= 0.8 f+b)
    python benchmarks/peer_ops.py --peer-path /tmp/peer --tiny    # CPU: the peer's kernels in the interpreter

Writes DIR/peer_ops.csv and .png (the peer's times), and with --compare DIR/peer_compare.csv and .png (the ratios).
`--tiny` on a CPU: fla-core has no PyTorch paths, so its Triton kernels run in the Triton interpreter
(TRITON_INTERPRET=1 in the child); the ops the interpreter cannot run there are skipped, each with its reason.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402

HOW = ("give --peer-path DIR (a folder holding fla-core's fla/, e.g. after `pip install --no-deps --target DIR "
       "fla-core`) or --python PY (an interpreter of a venv with fla-core)")


def child_env(peer_path: str | None) -> dict:
    env = dict(os.environ)
    if peer_path:  # the peer first, then a sitecustomize that hides an editable install of ours (see peer_shim/)
        paths = [str(Path(peer_path).resolve()), str(HERE / "peer_shim"), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def which_fla(python: str, env: dict) -> str:
    """The file the child's `import fla` resolves to (run from a scratch folder: the repo root is not on sys.path)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run([python, "-c", "import fla; print(fla.__file__)"], env=env, cwd=scratch,
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the peer process cannot import fla:\n{out.stderr.strip()}")
    return out.stdout.strip().splitlines()[-1]


def run_peer(args: argparse.Namespace, bench_args: list[str]) -> int:
    env = child_env(args.peer_path)
    location = which_fla(args.python, env)
    print(f"peer fla: {location}")
    if Path(location).resolve().is_relative_to(REPO) and not args.allow_ours:
        raise SystemExit(f"the child process imports this repository's fla ({location}), not the peer's: {HOW}")
    csv_path, _ = report.output_paths(args, "peer_ops")
    if args.tiny:
        bench_args = ["--tiny", *bench_args]
        if not args.allow_ours:  # the peer has no PyTorch paths: on a CPU its kernels run in the interpreter
            env["TRITON_INTERPRET"] = "1"
            if not any(a == "--reps" or a.startswith("--reps=") for a in bench_args):
                bench_args += ["--reps", "1"]  # an interpreted call takes seconds: one timed run is plenty here
            print("--tiny: the peer's Triton kernels run in the Triton interpreter on the CPU; an op the interpreter "
                  "cannot run (most of fla-core's chunk kernels, under triton 3.x) is skipped with its reason")
    out = ["--out", str(csv_path.parent.resolve()), "--name", csv_path.stem]
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.call([args.python, str(HERE / "bench_ops.py"), *bench_args, *out], env=env, cwd=scratch)


def read_rows(path: str) -> dict[tuple[str, int], dict]:
    return {(r["op"], int(r["T"])): r for r in report.read_csv(Path(path))}


def _ms(row: dict, key: str) -> float | None:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):  # blank: forward only
        return None


def compare(ours_path: str, peer_path: str) -> list[dict]:
    ours, peer = read_rows(ours_path), read_rows(peer_path)
    order = list(dict.fromkeys(o for o, _ in ours))
    keys = sorted((k for k in ours if k in peer), key=lambda k: (order.index(k[0]), k[1]))
    missing = sorted(set(ours) ^ set(peer))
    rows = []
    for op, T in keys:
        a, b = ours[(op, T)], peer[(op, T)]
        row = dict(op=op, T=T)
        for key in ("fwd_ms", "fwdbwd_ms"):
            mine, theirs = _ms(a, key), _ms(b, key)
            row["ours_" + key], row["peer_" + key] = mine, theirs
            row[key.replace("_ms", "_ratio")] = mine / theirs if mine and theirs else None
        rows.append(row)
    report.print_table(rows, ["op", "T", "ours_fwd_ms", "peer_fwd_ms", "fwd_ratio", "ours_fwdbwd_ms",
                              "peer_fwdbwd_ms", "fwdbwd_ratio"],
                       title="ours / fla-core (ms; ratio = ours / peer, lower is better)")
    means = []
    for op in dict.fromkeys(r["op"] for r in rows):
        ratios = [r["fwdbwd_ratio"] for r in rows if r["op"] == op and r["fwdbwd_ratio"]]
        if ratios:
            means.append(dict(op=op, geomean_fwdbwd_ratio=math.exp(sum(map(math.log, ratios)) / len(ratios)),
                              lengths=len(ratios)))
    report.print_table(means, title="geometric mean of forward+backward ratios per op")
    if missing:
        print("\nin one file only: " + ", ".join(f"{op}@{T}" for op, T in missing))
    return rows


COMPARE_PLOT = report.Plot(x="T", panels=[("forward: ours / fla-core", ["fwd_ratio"]),
                                          ("forward+backward: ours / fla-core", ["fwdbwd_ratio"])],
                           series=("op",), title="time ratio, ours / fla-core (lower is better)",
                           xlabel="sequence length T", logx=True, hline=(0.8, "goal 0.8x (fwd+bwd)"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # the rest goes to bench_ops: no prefix may match here
    parser.add_argument("--compare", nargs=2, metavar=("OURS_CSV", "PEER_CSV"), help="print ratios and exit")
    parser.add_argument("--peer-path", help="folder put first on the child's PYTHONPATH, holding the peer's fla/")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the child (a venv with fla-core)")
    report.add_output_args(parser, "peer_ops", "CPU: bench_ops' tiny sizes, the peer's kernels in the Triton "
                                               "interpreter")
    parser.add_argument("--allow-ours", action="store_true", help=argparse.SUPPRESS)  # smoke tests of the plumbing
    args, bench_args = parser.parse_known_args(argv)
    if args.compare:
        rows = compare(*args.compare)
        report.save(rows, report.output_paths(args, "peer_compare"), COMPARE_PLOT)
        return 0
    if not args.peer_path and args.python == sys.executable and not args.allow_ours:
        parser.error(f"no peer library to run: {HOW}; or --compare OURS_CSV PEER_CSV")
    return run_peer(args, bench_args)


if __name__ == "__main__":
    sys.exit(main())
