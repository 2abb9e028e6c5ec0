"""Compile every fla Triton kernel for an H100 (sm_90) on a machine without a GPU.

The interpreter (`TRITON_INTERPRET=1`, how the CPU tests run kernels) executes kernels as NumPy and forgives what
the compiler rejects (loop-carried types, constexpr misuse, pointer dtypes, int32/int64 mixes), so a kernel can pass
every CPU test and still fail to build on a GPU. Here, in a process where TRITON_INTERPRET is unset:

1. a stand-in driver reports a CUDA sm_90 target, and every JIT launch becomes a warm-up (compile to cubin, never
   launch); a failed compile is recorded and the run goes on, so one report lists every broken kernel;
2. each autotuner keeps one config, its first after its own pruning (`FLA_COMPILE_CONFIGS=all` keeps them all),
   because every config is a full compile and this box has two shared cores;
3. the dispatch is pointed at the Triton launchers (`is_interpreter()` stays False, so the launchers pick their GPU
   block sizes and keep bf16 `tl.dot` operands), and the cases of tests/gpu_compile/cases.py call every public op
   forward and backward on small CPU tensors (their outputs are garbage: never compare them);
4. every `@triton.jit` function defined under fla/ must have been compiled, or be called from a compiled kernel.

Exit 0: all compiled; 1: a compile failed or a kernel was never compiled (listed); 75: slow, the budget ran out
before every case compiled and none failed (the compiles that finished stay in triton's cache, so the next run
goes on from there); 77: this triton lacks the internals used here. Prints a table of registers / spills / shared
memory per compiled kernel.

    python -m tests.gpu_compile.harness [--budget SECONDS] [case-name-substring ...]
"""
from __future__ import annotations

import argparse
import ast
import builtins
import concurrent.futures
import contextlib
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

os.environ.pop("TRITON_INTERPRET", None)  # kernels must be real JITFunctions: unset before triton and fla load

import torch  # noqa: E402

from tests.host_trace import StandInDriver  # noqa: E402

SLOW, SKIP = 75, 77
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; part of the cache key
H100_SHARED_BYTES = 232448  # largest dynamic shared memory one H100 block may use (227 KiB)

try:
    import triton
    import triton.runtime.jit as jit
    from triton.backends.compiler import GPUTarget  # noqa: F401  (what StandInDriver reports: checked here)
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.driver import driver
except ImportError as e:  # pragma: no cover - depends on the installed triton
    print(f"triton internals changed: {e}")
    sys.exit(SKIP)
try:  # compiles in threads (the MLIR passes and ptxas release the GIL); triton >= 3.5 (else one at a time)
    from triton.runtime._async_compile import AsyncCompileMode
except ImportError:  # pragma: no cover
    AsyncCompileMode = None


class CompileOnlyDriver(StandInDriver):
    """Enough of a CUDA driver for the JIT to compile (never launch) kernels for sm_90 (tests/host_trace.py's
    stand-in, whose benchmarker here calls the kernel: each config is then compiled, so checked)."""

    def get_benchmarker(self):
        # with FLA_COMPILE_CONFIGS=all the autotuners "time" every config: each is compiled (so checked), all tie
        def bench(fn, quantiles=None, **kwargs):
            fn()
            return [1.0] * len(quantiles) if quantiles else 1.0

        return bench


@dataclass
class Compiled:
    name: str  # module.qualname of the JITFunction
    spec: str  # the dtypes of the pointer arguments and the constexprs, shortened
    seconds: float
    case: str = ""
    kernel: object = None
    error: str | None = None
    usage: dict = field(default_factory=dict)


def qualified(fn) -> str:
    """`module.qualname` of a JITFunction, Autotuner or Heuristics."""
    while not isinstance(fn, jit.JITFunction):
        fn = fn.fn
    return f"{fn.fn.__module__}.{fn.fn.__qualname__}"


class Recorder:
    """Turns every JIT launch into a compile-only warm-up and records what was compiled and what failed."""

    def __init__(self):
        self.compiled: list[Compiled] = []
        self.failed_keys: set = set()
        self.current_case = ""

    def install(self) -> None:
        run = jit.JITFunction.run
        recorder = self

        def compile_only(self, *args, grid, warmup, **kwargs):
            name = f"{self.fn.__module__}.{self.fn.__qualname__}"
            spec = describe(self, args, kwargs)
            if (name, spec) in recorder.failed_keys:
                return None  # failed before: one report per specialization
            cache = self.device_caches[0][0] if hasattr(self, "device_caches") else {}
            before = len(cache)
            start = time.perf_counter()
            record = Compiled(name, spec, 0.0, case=recorder.current_case)
            try:
                record.kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
            except Exception as e:  # a compile error is the finding: record it, keep compiling the rest
                recorder.failed_keys.add((name, spec))
                record.error = f"[case {recorder.current_case}] {type(e).__name__}: {e}"
                record.error += "\n" + "".join(traceback.format_exception(e)[-3:])
            record.seconds = time.perf_counter() - start
            if record.error or len(cache) > before:  # a new specialization (not one the JIT cache already held)
                recorder.compiled.append(record)
            return None

        jit.JITFunction.run = compile_only


    def wait(self, records: list[Compiled], deadline: float) -> list[Compiled]:
        """Resolve the compiles submitted to threads (AsyncCompileMode), until `deadline` (perf_counter); a failure
        is recorded like a direct one. Returns the records still compiling at the deadline."""
        pending = [r for r in records if r.kernel is not None and getattr(r.kernel, "future", None) is not None]
        timeout = None if deadline == float("inf") else max(0.0, deadline - time.perf_counter())
        concurrent.futures.wait([r.kernel.future for r in pending], timeout=timeout)
        late = [r for r in pending if not r.kernel.future.done()]
        for record in pending:
            if record in late:
                continue
            start = time.perf_counter()
            try:
                record.kernel = record.kernel.result()
            except Exception as e:
                record.kernel = None
                record.error = f"[case {record.case}] {type(e).__name__}: {e}"
                record.error += "\n" + "".join(traceback.format_exception(e)[-3:])
            record.seconds += time.perf_counter() - start
        return late


def describe(fn, args, kwargs) -> str:
    """A short, stable description of one specialization: tensor dtypes and the constexpr values."""
    values = dict(zip(fn.arg_names, args))
    values.update(kwargs)
    parts = []
    for p in fn.params:
        v = values.get(p.name)
        if isinstance(v, torch.Tensor):
            parts.append(f"{p.name}:{str(v.dtype).replace('torch.', '')}")
        elif p.is_constexpr:
            parts.append(f"{p.name}={v}")
    opts = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    parts += [f"{k}={v}" for k, v in opts.items()]
    return " ".join(parts)


def trim_autotune() -> None:
    """Each autotuner compiles only the first config that survives its own pruning (`prune_configs_by`), the one a
    GPU would try first, unless FLA_COMPILE_CONFIGS=all (each config is a compile)."""
    if os.environ.get("FLA_COMPILE_CONFIGS", "first") == "all":
        return
    prune = Autotuner.prune_configs

    def first_config(self, kwargs):
        return prune(self, kwargs)[:1]

    Autotuner.prune_configs = first_config


def route_to_triton() -> None:
    """Send every dispatch to the Triton launcher although the tensors are on the CPU and no interpreter runs."""
    import fla.ops.utils.dispatch as dispatch

    dispatch.get_backend = lambda x: "triton"


def resource_usage(kernel) -> dict:
    """Registers, stack frame (spills) and local memory per thread (`cuobjdump -res-usage` on the cubin) and the
    shared memory of a kernel."""
    usage = {"shared": getattr(kernel.metadata, "shared", 0)}
    cubin = kernel.asm.get("cubin") if hasattr(kernel, "asm") else None
    try:
        tool = triton.knobs.nvidia.cuobjdump.path
    except Exception:
        return usage
    if not cubin:
        return usage
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    for key, pattern in (("regs", r"REG:(\d+)"), ("stack", r"STACK:(\d+)"), ("local", r"LOCAL:(\d+)")):
        m = re.search(pattern, out)
        if m:
            usage[key] = int(m.group(1))
    return usage


def all_kernels() -> dict[str, object]:
    """Every @triton.jit function defined in a module under fla/ (also those wrapped in autotune / heuristics)."""
    import fla

    found = {}
    for info in pkgutil.walk_packages(fla.__path__, "fla."):
        try:
            module = importlib.import_module(info.name)
        except Exception as e:  # an optional dependency missing: its kernels would show as never compiled anyway
            print(f"(could not import {info.name}: {e})")
            continue
        for value in list(vars(module).values()):
            if isinstance(value, (jit.JITFunction, Autotuner, Heuristics)):
                base = value
                while not isinstance(base, jit.JITFunction):
                    base = base.fn
                if base.fn.__module__ == info.name:
                    found[qualified(base)] = base
    return found


def callees(fn: jit.JITFunction) -> list[jit.JITFunction]:
    """The @triton.jit functions a kernel's source names (calls, combine functions of tl.reduce / tl.associative_scan)."""
    out = []
    scope = dict(vars(builtins))
    scope.update(fn.fn.__globals__)
    for node in ast.walk(ast.parse(fn.src)):
        value = None
        if isinstance(node, ast.Name):
            value = scope.get(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            value = getattr(scope.get(node.value.id), node.attr, None)
        if isinstance(value, jit.JITFunction) and value is not fn:
            out.append(value)
    return out


def reached(roots: list[jit.JITFunction]) -> set[str]:
    """Names of the roots and of every @triton.jit function they call, transitively."""
    seen, todo = set(), list(roots)
    while todo:
        fn = todo.pop()
        name = qualified(fn)
        if name in seen:
            continue
        seen.add(name)
        todo += callees(fn)
    return seen


def print_table(records: list[Compiled]) -> None:
    print("\nPer specialization: registers per thread (255 = the cap), stack bytes per thread (register spills; "
          "0 is clean), shared memory bytes (H100 limit 232448)")
    print(f"{'kernel':58s} {'regs':>4s} {'stack':>5s} {'smem':>7s}  specialization")
    for r in sorted(records, key=lambda r: (r.name, r.spec)):
        if r.error:
            continue
        u = r.usage
        short = r.name.replace("fla.ops.", "").replace("fla.modules.", "modules.")
        print(f"{short:58s} {u.get('regs', '?'):>4} {u.get('stack', '?'):>5} {u.get('shared', '?'):>7}  {r.spec}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="compile every fla kernel for sm_90 without a GPU")
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds; past it no new case starts and compiles still running are left (exit 75)")
    parser.add_argument("cases", nargs="*", help="run only the cases whose names contain one of these")
    args = parser.parse_args(argv)
    run = getattr(jit.JITFunction, "run", None)
    if not hasattr(driver, "set_active") or run is None or "warmup" not in inspect.signature(run).parameters:
        print("triton internals changed: no driver.set_active or JITFunction.run(..., warmup)")
        return SKIP
    driver.set_active(CompileOnlyDriver())
    recorder = Recorder()
    recorder.install()
    trim_autotune()
    route_to_triton()
    from tests.gpu_compile.cases import CASES

    start = time.perf_counter()
    deadline = start + args.budget
    selected = [c for c in CASES if not args.cases or any(a in c.__name__ for a in args.cases)]
    case_errors, not_started = [], []
    threads = int(os.environ.get("FLA_COMPILE_THREADS", os.cpu_count() or 1))
    executor = ThreadPoolExecutor(threads) if threads > 1 and AsyncCompileMode is not None else None
    # one AsyncCompileMode for the whole run: the host code never needs a kernel, so the compiles overlap freely.
    # Entered by hand: its __exit__ waits for every compile, which a run past its budget must not do.
    mode = AsyncCompileMode(executor, ignore_errors=True) if executor else contextlib.nullcontext()
    mode.__enter__()
    for case in selected:
        if time.perf_counter() > deadline:
            not_started.append(case.__name__)
            continue
        recorder.current_case = case.__name__
        t0 = time.perf_counter()
        n0 = len(recorder.compiled)
        try:
            case()
        except Exception as e:  # host code failed (not a compile): a bug of the harness or of a launcher
            case_errors.append(f"{case.__name__}: {type(e).__name__}: {e}\n"
                               + "".join(traceback.format_exception(e)[-4:]))
        print(f"case {case.__name__}: {len(recorder.compiled) - n0} new specializations "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    late = recorder.wait(recorder.compiled, deadline)
    if late:
        executor.shutdown(wait=False, cancel_futures=True)
    else:
        mode.__exit__(None, None, None)
    late_ids = {id(r) for r in late}
    unfinished = len(late)
    recorder.compiled = [r for r in recorder.compiled if id(r) not in late_ids]
    for r in recorder.compiled:
        if r.kernel is not None:
            r.usage = resource_usage(r.kernel)
    print_table(recorder.compiled)

    spilling: dict[str, int] = {}
    for r in recorder.compiled:
        if r.usage.get("stack", 0) > 0:
            spilling[r.name] = max(spilling.get(r.name, 0), r.usage["stack"])
    if spilling:  # not a failure: a hint for the GPU session (slow, not wrong)
        print("\nspilling registers (stack bytes per thread, largest specialization):")
        for name, stack in sorted(spilling.items(), key=lambda x: -x[1]):
            print(f"  {name}: {stack}")
    failed = [r for r in recorder.compiled if r.error]
    too_big = [r for r in recorder.compiled if not r.error and r.usage.get("shared", 0) > H100_SHARED_BYTES]
    compiled_ok = sorted({r.name for r in recorder.compiled if not r.error})
    print(f"\n{len(recorder.compiled)} compiles of {len(compiled_ok)} kernels in {time.perf_counter() - start:.1f} s")
    print("compiled for sm_90:", ", ".join(n.rsplit(".", 1)[1] for n in compiled_ok))
    status = 0
    if failed:
        status = 1
        print(f"\nFAILED TO COMPILE ({len(failed)}):")
        for r in failed:
            print(f"- {r.name} [{r.spec}]\n  {r.error}")
    if too_big:
        status = 1
        print(f"\nSHARED MEMORY OVER THE H100 LIMIT ({H100_SHARED_BYTES} B):")
        for r in too_big:
            print(f"- {r.name} [{r.spec}]: {r.usage['shared']} B")
    if case_errors:
        status = 1
        print("\nCASES THAT RAISED OUTSIDE A COMPILE:")
        for e in case_errors:
            print("- " + e)
    slow = bool(not_started or unfinished)
    if slow:
        print(f"\nSLOW: the {args.budget:.0f} s budget ran out after {time.perf_counter() - start:.0f} s with "
              f"{unfinished} compiles unfinished and {len(not_started)} of {len(selected)} cases not started "
              f"({', '.join(not_started) or 'none'}). What compiled is in triton's cache: the next run goes on "
              "from there.")
    elif not args.cases:
        kernels = all_kernels()
        roots = [kernels[n] for n in {r.name for r in recorder.compiled} if n in kernels]
        missing = sorted(set(kernels) - reached(roots))
        if missing:
            status = 1
            print("\nNEVER COMPILED (add a case to tests/gpu_compile/cases.py):")
            for n in missing:
                print(f"- {n}")
    if slow and status == 0:
        status = SLOW
    if late:  # compiles still run in the pool's threads: do not wait for them at interpreter exit
        sys.stdout.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
