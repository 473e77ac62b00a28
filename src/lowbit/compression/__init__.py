"""Making the network itself smaller: channel pruning, low-rank layer replacements, magnitude pruning, MAC counting."""

from lowbit.compression.channels import PrunedChannels, prunable_layers, prune_channels
from lowbit.compression.costs import Costs, model_costs
from lowbit.compression.magnitude import Pruned, magnitude_prune
from lowbit.compression.svd import spatial_svd, weight_svd

__all__ = ["Costs", "Pruned", "PrunedChannels", "magnitude_prune", "model_costs", "prunable_layers", "prune_channels",
           "spatial_svd", "weight_svd"]
