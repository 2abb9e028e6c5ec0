"""The peer library's (fla-core 0.6.0) other import paths for our modules, so its users' imports keep working.

- `fla.modules.{activations,rotary,fused_cross_entropy,fused_kl_div,fused_linear_cross_entropy}.ops`: the peer keeps
  each in a package with its kernels in `.ops`; ours are single modules, so `.ops` is the module itself.
- `fla.modules.layernorm_gated` is `fla.modules.norm.layernorm_gated`, and `fla.modules.conv[.short_conv, .cp, ...]`
  the short and long convolutions (the peer's old paths for them).
- The peer's forward/backward launcher names at the old paths (`fla.modules.layernorm.layer_norm_fwd`,
  `fla.modules.fused_bitlinear.layer_norm_fwd_quant`, ...) are the new paths' objects: the clear
  NotImplementedError of `fla.modules._peer_internal`, or our function where one has the same meaning.
Nothing here computes anything: every name is an object defined in one of our modules.
"""
from __future__ import annotations

import sys
from importlib import import_module
from importlib.machinery import ModuleSpec
from types import ModuleType

_OPS = ("activations", "rotary", "fused_cross_entropy", "fused_kl_div", "fused_linear_cross_entropy")

# old path -> the module whose names it also exposes (only names it lacks are added)
_NAMES_FROM = {
    "layernorm": "norm.layernorm",
    "l2norm": "norm.l2norm",
    "fused_norm_gate": "norm.fused_norm_gate",
    "convolution": ("causal_conv1d.ops", "causal_conv1d.cp", "causal_conv1d.backends.cuda"),
}
# the peer's old `conv` package: path -> the modules whose names it holds (one module: that module itself)
_CONV = {
    "conv": ("causal_conv1d", "long_conv"),
    "conv.causal_conv1d": ("causal_conv1d.ops",), "conv.short_conv": ("causal_conv1d.ops",),
    "conv.long_conv": ("long_conv",), "conv.cp": ("causal_conv1d.cp",), "conv.cp.ops": ("causal_conv1d.cp",),
    "conv.cuda": ("causal_conv1d.backends.cuda",), "conv.cuda.ops": ("causal_conv1d.backends.cuda",),
    "conv.triton": ("causal_conv1d.ops",), "conv.triton.ops": ("causal_conv1d.ops",),
    "conv.triton.kernels": ("causal_conv1d.ops",),
}
# module -> {peer's name: ours, as "path.name"}
_RENAMED = {
    "fused_bitlinear": {"layer_norm_fwd_quant": "norm.layernorm_quant.layer_norm_quant_fwd",
                        "layer_norm_bwd": "norm.layernorm_quant.layer_norm_quant_bwd"},
    "fused_cross_entropy": {name: f"_peer_internal.{name}" for name in (
        "cross_entropy_fwd", "cross_entropy_bwd", "cross_entropy_reduce", "FusedCrossEntropyFunction")},
    "fused_linear_cross_entropy": {name: f"_peer_internal.{name}" for name in (
        "cross_entropy_fwd", "cross_entropy_bwd", "logsumexp_fwd", "LinearLossParallel")},
}
_RENAMED["fused_cross_entropy"].update(fused_cross_entropy_forward="_peer_internal.cross_entropy_fwd",
                                       CrossEntropyLossFunction="_peer_internal.FusedCrossEntropyFunction")
# the peer's autograd functions of its activations -> our function each one's apply computes
_AUTOGRAD = {
    "ELUPlusOneFunction": "elu_p1", "FastGeLUFunction": "fast_gelu_impl", "GeLUFunction": "bias_gelu_impl",
    "LogSigmoidFunction": "logsigmoid", "PowGLUFunction": "powglu", "PowGLULinearFunction": "powglu_linear",
    "SigmoidFunction": "sigmoid", "SigmoidGLUFunction": "sigmoidglu", "SigmoidGLULinearFunction": "sigmoidglu_linear",
    "SquaredReLUFunction": "sqrelu", "SwiGLUFunction": "swiglu", "SwiGLULinearFunction": "swiglu_linear",
    "SwishFunction": "swish",
}


def _public(module) -> list[str]:
    """A module's __all__, or the public functions and classes it defines."""
    return list(getattr(module, "__all__", None) or (
        n for n, o in vars(module).items()
        if not n.startswith("_") and getattr(o, "__module__", None) == module.__name__))


def _install(package: str) -> None:
    from fla.modules._peer_internal import autograd_form
    activations = import_module(f"{package}.activations")
    for name, fn in _AUTOGRAD.items():
        if not hasattr(activations, name):
            setattr(activations, name, autograd_form(name, getattr(activations, fn)))
    for name in _OPS:
        module = import_module(f"{package}.{name}")
        sys.modules.setdefault(f"{package}.{name}.ops", module)
        if not hasattr(module, "ops"):
            module.ops = module
    gated = import_module(f"{package}.norm.layernorm_gated")
    sys.modules.setdefault(f"{package}.layernorm_gated", gated)
    setattr(sys.modules[package], "layernorm_gated", gated)
    for old, sources in _NAMES_FROM.items():
        target = import_module(f"{package}.{old}")
        for source in (sources,) if isinstance(sources, str) else sources:
            src = import_module(f"{package}.{source}")
            for symbol in src.__all__:
                if not hasattr(target, symbol):
                    setattr(target, symbol, getattr(src, symbol))
    for old, targets in _CONV.items():
        fullname = f"{package}.{old}"
        if len(targets) == 1:
            module = import_module(f"{package}.{targets[0]}")
        else:  # a namespace package holding the public names of both
            module = ModuleType(fullname, "The peer's old path: " + ", ".join(targets))
            module.__spec__ = ModuleSpec(fullname, loader=None, is_package=True)
            module.__path__ = []
            for target in targets:
                src = import_module(f"{package}.{target}")
                for symbol in _public(src):
                    vars(module).setdefault(symbol, getattr(src, symbol))
            module.__all__ = sorted(n for n in vars(module) if not n.startswith("_"))
        sys.modules.setdefault(fullname, module)
        parent, _, child = fullname.rpartition(".")
        if old != "conv.causal_conv1d":  # there the attribute stays the function, as in the peer
            setattr(sys.modules[parent], child, sys.modules[fullname])
    for name, renames in _RENAMED.items():
        target = import_module(f"{package}.{name}")
        for old, new in renames.items():
            path, _, symbol = new.rpartition(".")
            if not hasattr(target, old):
                setattr(target, old, getattr(import_module(f"{package}.{path}"), symbol))
