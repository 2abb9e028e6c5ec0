"""The installed dependencies are the ones pyproject.toml declares, the fast movers are capped, and constraints.txt
(what CI installs) pins them inside those ranges.

A fresh `pip install` keeps to the ranges by itself; this catches an environment changed by hand afterwards (a
`pip install -U transformers`), and a range or pin edited without the other.
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# APIs we use move between their minor releases: each needs an upper bound (the newest minor CI ran green).
FAST_MOVERS = ("transformers", "datasets", "torchtitan", "torchdata", "triton", "tokenizers")


def declared() -> dict[str, tuple[Requirement, str]]:
    """canonical name -> (requirement, where it is declared) for the core dependencies and every extra."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    groups = {"dependencies": project["dependencies"]}
    groups.update({f"[{k}] extra": v for k, v in project.get("optional-dependencies", {}).items()})
    out = {}
    for group, requirements in groups.items():
        for line in requirements:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                out[canonicalize_name(req.name)] = (req, group)
    return out


def pins() -> dict[str, str]:
    """canonical name -> version pinned in constraints.txt."""
    out = {}
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                req = Requirement(line)
                specs = list(req.specifier)
                assert len(specs) == 1 and specs[0].operator == "==", f"constraints.txt: pin exactly: {line!r}"
                out[canonicalize_name(req.name)] = specs[0].version
    return out


def test_installed_versions_are_in_the_declared_ranges():
    wrong = []
    for name, (req, group) in declared().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # an extra that is not installed: its tests skip
        if not req.specifier.contains(installed, prereleases=True):
            wrong.append(f"{name} {installed} is installed, pyproject.toml ({group}) allows {req.specifier}")
    assert not wrong, (
        "installed versions outside the tested ranges:\n  " + "\n  ".join(wrong)
        + "\nInstall the tested set: pip install -e '.[train,test]' -c constraints.txt. To move to a newer version, "
        "read its changelog, raise the bound in pyproject.toml, run the tests, and regenerate constraints.txt."
    )


def test_fast_movers_are_capped_and_every_pin_is_inside_its_range():
    requirements, pinned = declared(), pins()
    for name in FAST_MOVERS:
        req, group = requirements[name]
        bounded = any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier)
        assert bounded, f"pyproject.toml ({group}): {name} needs an upper bound, the newest minor tested ({req})"
        assert name in pinned, f"constraints.txt must pin {name} (the version CI ran green with)"
    for name, (req, group) in requirements.items():
        if name in pinned:
            assert req.specifier.contains(pinned[name], prereleases=True), (
                f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's {req.specifier} ({group})"
            )
    # torch is chosen per machine (the CPU or a CUDA build, installed first): a pin would fight that choice
    assert "torch" not in pinned, "constraints.txt must not pin torch"
