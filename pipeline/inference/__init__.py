"""Helpers of the onnx stage: model loading/verification, input builders, output decoders, hot swap."""
