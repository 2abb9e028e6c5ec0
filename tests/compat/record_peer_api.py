"""Record the peer library's public op and module signatures (names, order, kinds, defaults) as JSON.

Run with the peer importable as `fla` in its own process, never beside ours (both are the package `fla`):

    pip install --no-deps --target /tmp/peer fla-core==0.6.0
    PYTHONPATH=/tmp/peer:benchmarks/peer_shim python tests/compat/record_peer_api.py

tests/compat/test_peer_api.py compares our signatures with the table, so a positional call written for the peer
never silently means something else here. Only the import paths of the families and modules we ship are recorded.
A new recording is merged into the table file: entries are added or refreshed, none is dropped (a name the peer no
longer has at a path stays recorded, as the contract we promised).
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import warnings

TABLE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_api_fla_core_0.6.0.json")

FAMILIES = ["attn", "delta_rule", "gated_delta_rule", "gla", "linear_attn", "retention", "simple_gla", "kda",
            "generalized_delta_rule", "generalized_delta_rule.dplr", "rwkv7"]
MODULES = ["fla.modules"] + [f"fla.modules.{m}" for m in (
    "convolution", "fused_cross_entropy", "fused_linear_cross_entropy", "l2norm", "layernorm", "mlp", "rotary")]
MODULES += ["fla.modules.fused_norm_gate"]  # the gated norms (added later)
MODULES += [f"fla.ops.{f}{sub}" for f in FAMILIES for sub in ("", ".naive")] + ["fla.ops.gated_delta_rule.gate"]
# the files the peer's own tests and layers import the public ops from (added later; the table only grows): only
# the names their family package exports are recorded there, not the files' internal helpers
SUBMODULES = {"fla.ops.attn.parallel": "fla.ops.attn"}
SUBMODULES.update({f"fla.ops.{f}.{sub}": f"fla.ops.{f}" for f in FAMILIES
                   for sub in ("chunk", "fused_recurrent", "fused_chunk", "parallel") if f != "attn"})
MODULES += ["fla.modules.activations"] + list(SUBMODULES)
MODULES += [f"fla.modules.{m}" for m in ("fused_bitlinear", "fused_kl_div", "long_conv")]  # added later
# the peer's package layout for the modules (issue 19, added later)
MODULES += [f"fla.modules.{m}" for m in (
    "norm", "norm.layernorm", "norm.fused_norm_gate", "norm.l2norm", "norm.layernorm_gated", "norm.layernorm_quant",
    "layernorm_gated", "causal_conv1d", "causal_conv1d.ops", "causal_conv1d.cp", "causal_conv1d.backends.cuda",
    "token_shift", "token_shift_cp", "l2warp", "feature_map")]


def describe(obj) -> list[list[str]] | None:
    """[[name, kind, default repr or '<required>'], ...] of a function, or of a class's __init__ (self dropped)."""
    try:
        sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name, "<required>" if p.default is p.empty else repr(p.default)]
            for p in sig.parameters.values() if p.name != "self"]


def main() -> None:
    warnings.filterwarnings("ignore")  # the peer warns that it falls back to the CPU
    import fla

    table = {"_source": f"fla-core {getattr(fla, '__version__', '?')}", "signatures": {}}
    for path in MODULES:
        try:
            module = importlib.import_module(path)
        except Exception as e:  # noqa: BLE001 - a path the peer lacks is simply not recorded
            print(f"not importable: {path}: {e}", file=sys.stderr)
            continue
        for name in sorted(getattr(module, "__all__", None) or vars(module)):
            obj = getattr(module, name, None)
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not getattr(obj, "__module__", "").startswith("fla."):
                continue
            if path in SUBMODULES and getattr(importlib.import_module(SUBMODULES[path]), name, None) is not obj:
                continue
            params = describe(obj)
            if params is not None:
                table["signatures"][f"{path}.{name}"] = params
            if inspect.isclass(obj) and path == "fla.modules":  # how the modules are called, once per class
                for method in ("forward", "step"):
                    if method in vars(obj) and (params := describe(vars(obj)[method])) is not None:
                        table["signatures"][f"{path}.{name}.{method}"] = params
    if os.path.exists(TABLE_FILE):
        with open(TABLE_FILE) as f:
            old = json.load(f)
        if old["_source"] != table["_source"]:
            raise SystemExit(f"the table records {old['_source']}, this peer is {table['_source']}: not merged")
        table["signatures"] = {**old["signatures"], **table["signatures"]}
    with open(TABLE_FILE, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(table['signatures'])} signatures in {TABLE_FILE}")


if __name__ == "__main__":
    main()
