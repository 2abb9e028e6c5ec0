"""Shared chunk blocks, the varlen index, input checks and the device dispatch.

Import from the submodules (`fla.ops.utils.dispatch`, `fla.ops.utils.chunk_h`, ...): this file re-exports nothing so
that families can be added without touching it.
"""
