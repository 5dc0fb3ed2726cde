"""The anatomy model's offline side: its network, training data, training loop, evaluation and ONNX export.

The service never imports this package: it runs the exported ONNX file through `model.anatomy_model`.
"""
