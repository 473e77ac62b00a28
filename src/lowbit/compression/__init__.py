"""Making the network itself smaller: per-layer ratios chosen on data, channel pruning, low-rank layers,
magnitude pruning, MAC counting."""

from lowbit.compression.channels import PrunedChannels, prunable_layers, prune_channels
from lowbit.compression.compress import CompressionResult, compress
from lowbit.compression.costs import Costs, model_costs
from lowbit.compression.magnitude import Pruned, magnitude_prune
from lowbit.compression.svd import spatial_svd, weight_svd

__all__ = ["CompressionResult", "Costs", "Pruned", "PrunedChannels", "compress", "magnitude_prune", "model_costs",
           "prunable_layers", "prune_channels", "spatial_svd", "weight_svd"]
