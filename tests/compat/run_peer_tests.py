"""Run the peer library's own test files for our families (flash-linear-attention, from the mirror) against our
package, on CPU with small shapes, and count what passes: the measure of "a user switches by changing an import".

    python tests/compat/run_peer_tests.py [--path torch|triton] [--files test_gla.py ...] [-n 2] [--keep DIR]

The files are copied from the mirror's HEAD into a scratch folder next to a conftest.py of ours that
- gives them the `fla.utils` names they import (`assert_close` with the peer's semantics, `device = "cpu"`, the
  platform flags all False), since our package has no `fla.utils`;
- runs our ops on one path: `torch` (FLA_BACKEND=torch, the PyTorch twins) or `triton` (TRITON_INTERPRET=1, the
  Triton kernels interpreted);
- shrinks every parametrized shape before the test runs (B <= 2, H <= 2 with HQ / H <= 2, T > 128 -> 64 + T % 61,
  head and hidden dims > 64 -> 32 + 2 (D % 33 // 2), cu_seqlens scaled to about 200 tokens) and runs bfloat16 cases in float16
  (bfloat16 tl.dot is wrong in the interpreter). Test ids keep the original shapes.
It prints passed / failed / skipped per file and the most common failure messages. Not collected by pytest (the
name does not start with test_); it takes minutes (the triton path much longer).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIRROR = "/work/.mirror/fla-org+flash-linear-attention/repo"
SHIM = os.path.join(ROOT, "benchmarks", "peer_shim")
OPS = ["test_attn.py", "test_delta.py", "test_gdn.py", "test_gla.py", "test_linear_attn.py", "test_retention.py",
       "test_simple_gla.py", "test_hgrn.py", "test_delta_product.py"]
MODULES = ["test_conv.py", "test_cross_entropy.py", "test_l2norm.py", "test_layernorm.py",
           "test_layernorm_gated.py", "test_rotary.py", "test_activation.py"]
MODULES += ["test_kl_div.py"]  # added later

CONFTEST = r'''
import math
import os
import sys
import types

PATH = os.environ.get("FLA_PEER_TESTS_PATH", "torch")
if PATH == "triton":
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.pop("FLA_BACKEND", None)
else:
    os.environ["FLA_BACKEND"] = "torch"

import pytest
import torch

import fla

torch.set_num_threads(1)


def get_abs_err(x, y):
    return (x.detach() - y.detach()).flatten().abs().max().item()


def get_err_ratio(x, y):
    err = (x.detach() - y.detach()).flatten().square().mean().sqrt().item()
    base = (x.detach()).flatten().square().mean().sqrt().item()
    return err / (base + 1e-8)


def assert_close(prefix, ref, tri, ratio, warning=False, err_atol=1e-6):
    """The peer's test helper: pass under err_atol absolute, else the RMS error ratio must be under `ratio`."""
    abs_err = get_abs_err(ref, tri)
    rate = get_err_ratio(ref, tri)
    msg = f"{prefix:>16} diff: {abs_err:.6f} ratio: {rate:.6f}"
    if abs_err <= err_atol:
        return
    assert not torch.isnan(ref).any(), f"{prefix}: NaN detected in ref"
    assert not torch.isnan(tri).any(), f"{prefix}: NaN detected in tri"
    if warning:
        return
    assert rate < ratio, msg


try:
    import fla.utils as utils  # ours, if it ever exists: only what it lacks is added
except ImportError:
    utils = types.ModuleType("fla.utils")
    sys.modules["fla.utils"] = utils
    fla.utils = utils
_NAMES = dict(assert_close=assert_close, get_abs_err=get_abs_err, get_err_ratio=get_err_ratio, device="cpu",
              device_platform="cpu", device_torch_lib=torch.cpu, check_shared_mem=lambda *a, **k: True)
for _name, _value in _NAMES.items():
    if not hasattr(utils, _name):
        setattr(utils, _name, _value)
if not hasattr(utils, "__getattr__"):
    def _flag(name):
        if name.startswith(("IS_", "is_")):
            return False
        raise AttributeError(name)
    utils.__getattr__ = _flag

DIMS = {"D", "K", "V", "hidden_size", "head_dim", "dim", "N"}


def _shrink_seqlens(cu):
    total = cu[-1]
    if total <= 200:
        return cu
    out = [0]
    for a, b in zip(cu[:-1], cu[1:]):
        step = round((b - a) * 200 / total)
        out.append(out[-1] + (max(step, 1) if b > a else 0))
    return out


def shrink(params):
    p = dict(params)
    H0 = p.get("H")
    for name, value in params.items():
        if isinstance(value, bool) or value is None:
            continue
        if name == "dtype" and value == torch.bfloat16:
            p[name] = torch.float16
        elif not isinstance(value, (int, list)):
            continue
        elif name == "cu_seqlens" and isinstance(value, list) and all(isinstance(c, int) for c in value):
            p[name] = _shrink_seqlens(value)
        elif not isinstance(value, int):
            continue
        elif name == "T" and value > 128:
            p[name] = 64 + value % 61
        elif name == "B" and value > 2:
            p[name] = 2
        elif name == "H" and value > 2:
            G = params.get("G")  # k gets H // G heads: keep it whole
            p[name] = min(value, 2 * G) if isinstance(G, int) and G > 0 and value % G == 0 else 2
        elif name in ("HQ", "HV") and isinstance(H0, int) and H0 > 0:  # grouped heads: a multiple of the new H
            p[name] = shrink({"H": H0, **{k: v for k, v in params.items() if k == "G"}})["H"] * min(value // H0, 2)
        elif name in DIMS and value > 64:
            p[name] = 32 + 2 * (value % 33 // 2)  # even: a rotary dim must be
    if isinstance(p.get("rotary_dim"), int) and isinstance(p.get("D"), int) and p["rotary_dim"] >= p["D"] > 0:
        p["rotary_dim"] = 2 * (p["D"] // 4)  # still a part of the head dim, as the test means it
    return p


def pytest_collection_modifyitems(config, items):
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is not None:
            spec.params.update(shrink(spec.params))
'''


def extract(name: str, folder: str, into: str) -> None:
    text = subprocess.run(["git", f"--git-dir={MIRROR}", "show", f"HEAD:tests/{folder}/{name}"], check=True,
                          capture_output=True, text=True).stdout
    with open(os.path.join(into, name), "w") as f:
        f.write(text)


def peer_counts(work: str, files: list[str], peer: str, k: str | None) -> collections.Counter:
    """Tests per file as the peer's own package collects them (the denominator: a file that cannot even be imported
    against ours counts all its tests as failed)."""
    env = dict(os.environ, FLA_PEER_TESTS_PATH="torch", PYTHONPATH=f"{peer}{os.pathsep}{SHIM}")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "--import-mode=importlib", f"--rootdir={work}", "-o", "addopts=", "-W", "ignore"]
                         + (["-k", k] if k else []) + [os.path.join(work, n) for n in files],
                         cwd=work, env=env, capture_output=True, text=True).stdout
    return collections.Counter(line.split("::")[0].split("/")[-1] for line in out.splitlines() if "::" in line)


def summarize(xml_file: str) -> tuple[dict, collections.Counter]:
    per_file = collections.defaultdict(collections.Counter)
    reasons = collections.Counter()
    for case in ET.parse(xml_file).getroot().iter("testcase"):
        # a file that does not import has one case with no classname, named after the file
        name = (case.get("classname", "").split(".")[-1] or case.get("name", "?").split(".")[-1]) + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                text = (child.get("message") or child.text or "").strip().splitlines()
                if not case.get("classname"):  # a file that does not import: its last line says why
                    outcome, text = "import", (child.text or "").strip().splitlines()[-1:]
                reasons[(text[0] if text else child.tag)[:150]] += 1
            elif child.tag == "skipped":
                outcome = "skipped"
        per_file[name][outcome] += 1
    return per_file, reasons


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=("torch", "triton"), default="torch")
    parser.add_argument("--files", nargs="*", help="test file names (default: every in-scope file)")
    parser.add_argument("-n", type=int, default=1, help="pytest-xdist workers")
    parser.add_argument("-k", default=None, help="pytest -k expression")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per test")
    parser.add_argument("--keep", help="write the scratch folder (files, conftest, report.xml) here and keep it")
    parser.add_argument("--reasons", type=int, default=25, help="how many failure messages to print")
    parser.add_argument("--package", default=ROOT, help="the folder holding the `fla` to test (default: this repo)")
    parser.add_argument("--peer", default=os.environ.get("FLA_PEER_PATH", "/tmp/peer"),
                        help="the peer's installed package (to count its tests)")
    args = parser.parse_args(argv)
    files = args.files or OPS + MODULES
    work = args.keep or tempfile.mkdtemp(prefix="peer_tests_")
    os.makedirs(work, exist_ok=True)
    for name in files:
        extract(name, "ops" if name in OPS or name not in MODULES else "modules", work)
    with open(os.path.join(work, "conftest.py"), "w") as f:
        f.write(CONFTEST)
    xml_file = os.path.join(work, "report.xml")
    expected = peer_counts(work, files, args.peer, args.k)
    env = dict(os.environ, FLA_PEER_TESTS_PATH=args.path, PYTHONPATH=os.path.abspath(args.package))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
           f"--rootdir={work}", f"--junitxml={xml_file}", f"--timeout={args.timeout}", "-o", "addopts=",
           "-W", "ignore", "--continue-on-collection-errors"]
    cmd += (["-n", str(args.n)] if args.n > 1 else []) + (["-k", args.k] if args.k else [])
    with open(os.path.join(work, "pytest.log"), "w") as log:
        subprocess.run(cmd + [os.path.join(work, n) for n in files], cwd=work, env=env, stdout=log,
                       stderr=subprocess.STDOUT)
    if not os.path.exists(xml_file):
        raise SystemExit(f"pytest wrote no report; its output is in {work}/pytest.log (use --keep to see it)")
    per_file, reasons = summarize(xml_file)
    total = collections.Counter()
    print(f"peer tests on our package, {args.path} path ({work if args.keep else 'scratch folder removed'}):")
    for name in sorted(set(per_file) | set(expected)):
        c = per_file[name]
        if c["import"]:  # not importable against ours: every test the peer collects there fails
            c = collections.Counter(failed=expected[name], import_error=1)
        total += c
        note = "  (does not import)" if c["import_error"] else ""
        print(f"  {name:<24} of {expected[name]:>4}: passed {c['passed']:>4}  failed {c['failed']:>4}  "
              f"skipped {c['skipped']:>4}{note}")
    print(f"  {'total':<24} of {sum(expected.values()):>4}: passed {total['passed']:>4}  failed {total['failed']:>4}  "
          f"skipped {total['skipped']:>4}")
    if reasons:
        print("most common failure messages:")
        for text, count in reasons.most_common(args.reasons):
            print(f"  {count:>4}  {text}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
