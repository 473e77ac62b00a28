"""Training a sim: quantization-aware training and BatchNorm re-estimation."""
