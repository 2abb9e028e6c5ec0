"""The peer library's import path for the DPLR references: the same functions as `..naive`."""
from fla.ops.generalized_delta_rule.naive import dplr_chunkwise, dplr_recurrence, naive_recurrent_dplr_delta_rule

__all__ = ["dplr_chunkwise", "dplr_recurrence", "naive_recurrent_dplr_delta_rule"]
