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
