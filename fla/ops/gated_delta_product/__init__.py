from fla.ops.gated_delta_product.chunk import chunk_gated_delta_product
from fla.ops.gated_delta_product.naive import naive_recurrent_gated_delta_product

__all__ = ["chunk_gated_delta_product", "naive_recurrent_gated_delta_product"]
