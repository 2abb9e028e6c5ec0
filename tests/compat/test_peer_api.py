"""Our public ops and modules take the same arguments, in the same order, with the same defaults, as the peer
library's (fla-core 0.6.0, recorded in peer_api_fla_core_0.6.0.json by record_peer_api.py), so that code written
for it either means the same here or fails loudly: a positional call never lands in another parameter, a default
never silently changes the math, and no keyword is swallowed by **kwargs.

Where we differ on purpose the reason is in DELIBERATE; the peer parameters we do not have yet are listed in MISSING
(the drop-in API work shrinks that list; adding to it needs a reason in the review).
"""
from __future__ import annotations

import importlib
import inspect
import json
import os

import pytest

TABLE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_api_fla_core_0.6.0.json")
with open(TABLE_FILE) as f:
    PEER = json.load(f)["signatures"]

POSITIONAL = ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")

# Both tables are keyed by the short name (one object is often importable from several paths); the modules' forward
# and step methods are compared too, as `Class.method`.
# (name, parameter) -> why our default differs from the peer's
DELIBERATE = {
    ("FusedLinearCrossEntropyLoss", "num_chunks"):
        "None sizes the chunks by memory; the loss and gradients do not depend on the chunking",
}

# name -> the peer's parameters we lack (all of them after our last positional parameter, or keyword-only there)
MISSING = {
}


def ours(name: str):
    """Our object at the peer's import path (a module attribute, or a class's method), or None."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def short(name: str) -> str:
    """The key of DELIBERATE / MISSING: the last part of the name, `Class.method` for a module's method."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1] in ("forward", "step") else parts[-1]


def shared() -> list[str]:
    names = [n for n in sorted(PEER) if ours(n) is not None and MISSING.get(short(n), []) is not None]
    assert len(names) >= 30, f"only {len(names)} shared names: is the table or an import path broken?"
    return names


def signature(obj) -> list[tuple[str, str, str]]:
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)  # methods: unbound, self is dropped
    return [(p.name, p.kind.name, "<required>" if p.default is p.empty else repr(p.default))
            for p in sig.parameters.values() if p.name != "self"]


def deprecated_in_the_peer(name: str) -> bool:
    """The peer's deprecated entry points take only **kwargs (and raise NotImplementedError)."""
    return [p[1] for p in PEER[name]] == ["VAR_KEYWORD"]


@pytest.mark.parametrize("name", shared())
def test_signature_matches_the_peer(name):
    if deprecated_in_the_peer(name):  # ours raise the same way, naming what to use instead
        with pytest.raises(NotImplementedError, match="use "):
            ours(name)(q=None)
        return
    peer = [tuple(p) for p in PEER[name] if p[1] not in ("VAR_POSITIONAL", "VAR_KEYWORD")]
    mine = signature(ours(name))
    peer_takes_any = any(p[1] == "VAR_KEYWORD" for p in PEER[name])  # then the peer ignores unknown keywords too
    assert peer_takes_any or not [p for p in mine if p[1] in ("VAR_POSITIONAL", "VAR_KEYWORD")], (
        f"{name} takes *args/**kwargs: a peer argument we lack would be swallowed silently")
    # 1. positional calls: our positional parameters are the peer's, in its order (the rest keyword-only)
    peer_pos = [p[0] for p in peer if p[1] in POSITIONAL]
    my_pos = [p[0] for p in mine if p[1] in POSITIONAL]
    n = min(len(peer_pos), len(my_pos))
    assert my_pos[:n] == peer_pos[:n], (
        f"{name}: positional order {my_pos} differs from the peer's {peer_pos}: a positional call would land in "
        "another parameter. Reorder, or make ours keyword-only from the first parameter the peer lacks")
    # 2. defaults: a parameter with a default in the peer has the same default here
    my_defaults = {p[0]: p[2] for p in mine}
    for pname, _, default in peer:
        if default == "<required>" or pname not in my_defaults or (short(name), pname) in DELIBERATE:
            continue
        assert my_defaults[pname] == default, (
            f"{name}({pname}=...): default {my_defaults[pname]} here, {default} in the peer: a call that omits it "
            "computes something else. Match it, or record why in DELIBERATE (and in the docstring)")
    # 3. what the peer has and we lack is known
    lacking = [p[0] for p in peer if p[0] not in my_defaults]
    assert lacking == MISSING.get(short(name), []), (
        f"{name}: the peer's parameters {lacking} are missing here (recorded: {MISSING.get(short(name), [])})")


def test_table_is_the_recorded_peer_version():
    with open(TABLE_FILE) as f:
        assert json.load(f)["_source"] == "fla-core 0.6.0"
