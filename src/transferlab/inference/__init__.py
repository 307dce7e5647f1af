"""Running a frozen network: the torch and ONNX Runtime backends, batches, image transforms."""
