"""ONNX QDQ graphs: split a tagged export into FP32 + encodings + an integer QDQ model."""
