"""Using a trained model: predict, export to ONNX, the transferlab command line."""
