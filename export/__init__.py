"""Export: checkpoint -> ONNX graphs (and later TensorRT plans) in a Triton model repository."""
