"""The cache under the peer library's import path (`from fla.models.utils import Cache, FLACache`); `Cache` is the
same class as `FLACache`, as the peer's `Cache` is its `FLACache` under the name its layers use."""
from fla.models.cache import FLACache, FLALayerCache, LayerStates

Cache = FLACache

__all__ = ["Cache", "FLACache", "FLALayerCache", "LayerStates"]
