"""The techniques' math, written once on tensors (no graphs): used by the torch and ONNX front ends."""
