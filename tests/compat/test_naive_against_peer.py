"""Our naive references give the peer library's (fla-core 0.6.0) numbers for the same calls: runs
check_naive_against_peer.py, which calls the peer's naive functions in a process of their own. Skipped where the peer
is not installed (FLA_PEER_PATH, default /tmp/peer: `pip install --no-deps --target /tmp/peer fla-core==0.6.0`)."""
from __future__ import annotations

import os

import pytest

from tests.compat import check_naive_against_peer as check

PEER = os.environ.get("FLA_PEER_PATH", "/tmp/peer")


@pytest.mark.skipif(not os.path.isfile(os.path.join(PEER, "fla", "ops", "__init__.py")),
                    reason=f"the peer library is not installed at {PEER}")
def test_naive_references_agree_with_the_peer(capsys):
    status = check.main(["--peer", PEER])
    out = capsys.readouterr().out
    assert status == 0, "naive references differ from the peer's:\n" + "\n".join(
        line for line in out.splitlines() if line.startswith("FAIL"))
