"""Export of Keras models to SavedModel, TFLite and ONNX, verified against the model."""
