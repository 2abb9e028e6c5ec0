"""Shared test helpers: relative-error comparison, seeding, NaN poisoning, devices."""
from __future__ import annotations

import contextlib
import io
import os
import zlib
from typing import Iterator

import torch


def device() -> str:
    """Where kernel tests put their inputs: the CPU (interpreter) unless FLA_TEST_DEVICE=cuda on a GPU machine."""
    return "cuda" if os.environ.get("FLA_TEST_DEVICE") == "cuda" and torch.cuda.is_available() else "cpu"


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64 (0 when both are zero)."""
    got, want = got.detach().double(), want.detach().double()
    denom = want.norm().item()
    diff = (got - want).norm().item()
    return diff if denom == 0 else diff / denom


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """Relative error bound ||got - want|| / ||want|| <= rel; prints the error so every run shows its margin."""
    assert got.shape == want.shape, f"{name}: shape {list(got.shape)} != expected {list(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values (a kernel left poisoned or unwritten outputs)"
    err = rel_err(got, want)
    print(f"{name:>8s}: rel err {err:.2e} (bound {rel:.0e})")
    assert err <= rel, f"{name}: relative error {err:.3e} exceeds {rel:.0e}"


def seed(*case: object) -> None:
    """Fresh random inputs per test case, reproducible from the case's parameters."""
    # crc32, not hash(): Python salts str hashes per process, which would make a failing case irreproducible.
    torch.manual_seed(zlib.crc32("|".join(map(str, case)).encode()))


@contextlib.contextmanager
def poisoned_empty() -> Iterator[None]:
    """Inside the block torch.empty/empty_like/new_empty return NaN-filled tensors (floats), so an output a kernel
    forgets to write shows up as NaN instead of as stale memory that happens to look right."""
    originals = (torch.empty, torch.empty_like, torch.Tensor.new_empty)

    def fill(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    torch.empty = lambda *a, **k: fill(originals[0](*a, **k))
    torch.empty_like = lambda *a, **k: fill(originals[1](*a, **k))
    torch.Tensor.new_empty = lambda self, *a, **k: fill(originals[2](self, *a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = originals


@contextlib.contextmanager
def transformers_log() -> Iterator[io.StringIO]:
    """What transformers logs inside the block. Its deprecation notices are `warning_once`: the memo is cleared
    first, so a notice an earlier test in this process printed shows again."""
    import logging

    from transformers.utils import logging as hf_logging

    logging.Logger.warning_once.cache_clear()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
