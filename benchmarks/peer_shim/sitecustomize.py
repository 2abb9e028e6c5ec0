"""Put on PYTHONPATH of a process that must import the peer library's `fla` (fla-core), never ours.

fla-core ships `fla.ops`, `fla.modules`, `fla.utils` but no `fla.models`, and its `import fla` tries
`fla.models` as optional: in a venv where our package is installed editable, setuptools' editable finder (installed
by a .pth file, before this runs) answers that import with our `fla/models`, which then imports our ops that the
peer lacks. Dropping the editable finders for `fla` / `flame` leaves the peer's package whole."""
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                    and "__editable__" not in type(f).__module__]
for name in [m for m in sys.modules if m.startswith("__editable__")]:
    del sys.modules[name]

# fla-core's `fla/__init__.py` also extends its package path to every `fla` folder on sys.path, so that a separately
# installed `fla.layers` / `fla.models` can join it; a regular (non-editable) install of ours in site-packages would
# join that way too. Our `fla` is the one with `flame` beside it: submodules of `fla` are looked up without it.
import importlib.abc  # noqa: E402
import importlib.machinery  # noqa: E402
import os  # noqa: E402


def _ours(folder: str) -> bool:
    return os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(folder)), "flame"))


class _PeerFlaOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith("fla.") or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, [p for p in path if not _ours(p)], target)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {fullname!r} in the peer library", name=fullname)
        return spec


sys.meta_path.insert(0, _PeerFlaOnly())
