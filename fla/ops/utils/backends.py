"""The peer library's (fla-core 0.6.0) backend objects, as fla means them.

The peer routes some ops through a registry of alternative implementations (FlashQLA's TileLang kernels on Hopper
and Blackwell, Triton-Ascend kernels on Ascend NPUs), each a `BaseBackend` with a priority, an enabling environment
variable and a `<function>_verifier` per function that says whether it takes a call. fla has one dispatch
(`fla.ops.utils.dispatch`: Triton kernels on CUDA and under the interpreter, PyTorch twins on the CPU) and ships
none of those implementations, so:
- the backend classes exist at the peer's paths with the peer's attributes, and their verifiers answer as the
  peer's do (code that asks "would this call be accepted by FlashQLA?" gets the same answer);
- `is_available()` is False for every one of them: fla's ops never route a call there, whatever is installed or
  set in the environment (so a result never depends on an optional package);
- calling one of their implementations raises `NotImplementedError` naming the backend, instead of running
  something else under its name.
"""
from __future__ import annotations

import importlib.util
import os
from typing import ClassVar


class BaseBackend:
    """One alternative implementation of an op family's functions (the peer's `fla.backends.BaseBackend`).

    Attributes (as in the peer):
        backend_type: the backend's name, e.g. "flash_qla"
        package_name: the external package it needs, or None
        env_var: the environment variable that switches it on or off ("0" = off), or None (always on)
        default_enable: whether it is on when env_var is unset
        priority: lower first, when several would take a call
    """

    backend_type: ClassVar[str] = "base"
    package_name: ClassVar[str | None] = None
    env_var: str | None = None
    default_enable: ClassVar[bool] = True
    priority: ClassVar[int] = 5
    # what the backend is, for the errors: "FlashQLA (TileLang kernels, package flash_qla)"
    label: ClassVar[str] = "this backend"

    def __init__(self, *, env_var: str | None = None):
        if env_var is not None:
            self.env_var = env_var

    @classmethod
    def package_installed(cls) -> bool:
        """Whether the backend's external package could be imported (says nothing about fla using it)."""
        return cls.package_name is None or importlib.util.find_spec(cls.package_name) is not None

    @classmethod
    def is_available(cls) -> bool:
        """False: fla ships none of the peer's alternative backends and never dispatches to one (see the module
        docstring); the op runs fla's own kernels."""
        return False

    def is_enabled(self) -> bool:
        """The peer's switch: on unless `env_var` (or FLA_<BACKEND_TYPE>) says otherwise. fla reads it only to
        answer this question; it changes no op's path."""
        if self.env_var is None:
            return True
        if os.environ.get(f"FLA_{self.backend_type.upper()}", "0") != "0":
            return True
        return os.environ.get(self.env_var, "1" if self.default_enable else "0") != "0"

    @classmethod
    def can_use(cls) -> bool:
        return cls.is_available() and cls().is_enabled()

    def get_implementation(self, function_name: str):
        return getattr(self, function_name, None)

    def verify(self, function_name: str, *args, **kwargs) -> tuple[bool, str | None]:
        """`(accepted, reason)` from the backend's `<function_name>_verifier`; a function without one is accepted,
        and a verifier that raises rejects with the error's text (as in the peer)."""
        verifier = getattr(self, f"{function_name}_verifier", None)
        if verifier is None:
            return True, None
        try:
            return verifier(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the peer's contract: a failing verifier is a rejection
            return False, str(error)

    def not_shipped(self, function_name: str, use_instead: str):
        """Raise the error every implementation method of a backend fla does not ship raises."""
        raise NotImplementedError(
            f"{type(self).__name__}.{function_name}: {self.label} is not shipped with fla, and fla never dispatches "
            f"to it (it runs its own Triton kernels on CUDA and PyTorch on the CPU instead); use {use_instead}")
