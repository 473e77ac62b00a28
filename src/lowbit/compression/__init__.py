"""Making the network itself smaller: low-rank layer replacements, magnitude pruning, MAC counting."""

from lowbit.compression.costs import Costs, model_costs
from lowbit.compression.magnitude import Pruned, magnitude_prune
from lowbit.compression.svd import spatial_svd, weight_svd

__all__ = ["Costs", "Pruned", "magnitude_prune", "model_costs", "spatial_svd", "weight_svd"]
