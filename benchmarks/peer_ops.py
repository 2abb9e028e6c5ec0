"""The same op benchmark against the peer library fla-core, in a separate process, and a side-by-side comparison.

fla-core is also imported as `fla`, so it must never share a process with ours. This script runs `bench_ops.py` in a
child process whose `fla` is the peer's: either another interpreter (`--python`, e.g. a venv with fla-core installed)
or ours with `--peer-path` put first on PYTHONPATH (a folder that holds the peer's `fla/` package, e.g. an unpacked
wheel or a `pip install --target` folder). It refuses to run if the child would import this repository's `fla`.

    pip install --target /tmp/peer fla-core                      # once, anywhere with the registry (no deps needed)
    python benchmarks/peer_ops.py --peer-path /tmp/peer --out peer.csv [bench_ops options: --ops, --T, --dtype]
    python benchmarks/bench_ops.py --out ours.csv [same options]
    python benchmarks/peer_ops.py --compare ours.csv peer.csv    # ratios ours / peer (goal <= 0.8 fwd+bwd)
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


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
        raise SystemExit(f"the child process imports this repository's fla ({location}), not the peer's: give "
                         "--peer-path (a folder holding the peer's fla/) or --python (an interpreter with fla-core)")
    out = str(Path(args.out).resolve())
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.call([args.python, str(HERE / "bench_ops.py"), *bench_args, "--out", out], env=env,
                               cwd=scratch)


def read_rows(path: str) -> dict[tuple[str, int], dict]:
    with open(path, newline="") as f:
        return {(r["op"], int(r["T"])): r for r in csv.DictReader(f)}


def compare(ours_path: str, peer_path: str) -> list[dict]:
    ours, peer = read_rows(ours_path), read_rows(peer_path)
    keys = [k for k in ours if k in peer]
    missing = sorted(set(ours) ^ set(peer))
    rows = []
    print(f"{'op':24s} {'T':>6s} {'ours fwd':>10s} {'peer fwd':>10s} {'ratio':>6s}   "
          f"{'ours f+b':>10s} {'peer f+b':>10s} {'ratio':>6s}   (ms; ratio = ours / peer, lower is better)")
    for op, T in sorted(keys, key=lambda k: (list(dict.fromkeys(o for o, _ in keys)).index(k[0]), k[1])):
        a, b = ours[(op, T)], peer[(op, T)]
        row = dict(op=op, T=T)
        for key in ("fwd_ms", "fwdbwd_ms"):
            row["ours_" + key], row["peer_" + key] = float(a[key]), float(b[key])
            row[key.replace("_ms", "_ratio")] = float(a[key]) / float(b[key])
        rows.append(row)
        print(f"{op:24s} {T:6d} {row['ours_fwd_ms']:10.3f} {row['peer_fwd_ms']:10.3f} {row['fwd_ratio']:6.2f}   "
              f"{row['ours_fwdbwd_ms']:10.3f} {row['peer_fwdbwd_ms']:10.3f} {row['fwdbwd_ratio']:6.2f}")
    print("\ngeometric mean of forward+backward ratios per op:")
    for op in dict.fromkeys(r["op"] for r in rows):
        ratios = [r["fwdbwd_ratio"] for r in rows if r["op"] == op]
        print(f"  {op:24s} {math.exp(sum(map(math.log, ratios)) / len(ratios)):6.2f}  over {len(ratios)} lengths")
    if missing:
        print("\nin one file only: " + ", ".join(f"{op}@{T}" for op, T in missing))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs=2, metavar=("OURS_CSV", "PEER_CSV"), help="print ratios and exit")
    parser.add_argument("--peer-path", help="folder put first on the child's PYTHONPATH, holding the peer's fla/")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the child (a venv with fla-core)")
    parser.add_argument("--out", default="peer_ops.csv", help="CSV the child writes")
    parser.add_argument("--allow-ours", action="store_true", help=argparse.SUPPRESS)  # smoke tests of the plumbing
    args, bench_args = parser.parse_known_args(argv)
    if args.compare:
        compare(*args.compare)
        return 0
    if not args.peer_path and args.python == sys.executable and not args.allow_ours:
        parser.error("give --peer-path or --python so that the child imports fla-core, or --compare")
    return run_peer(args, bench_args)


if __name__ == "__main__":
    sys.exit(main())
