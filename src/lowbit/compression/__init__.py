"""Making the network itself smaller: low-rank layer replacements and MAC counting."""

from lowbit.compression.costs import Costs, model_costs
from lowbit.compression.svd import spatial_svd, weight_svd

__all__ = ["Costs", "model_costs", "spatial_svd", "weight_svd"]
