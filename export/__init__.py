"""The export pipeline behind the `squeeze` command (`python -m export.cli`): SqueezeTime to ONNX, TFLite/LiteRT,
ExecuTorch and Core ML with every artifact verified against PyTorch (``export.pipeline.export_squeezetime``,
``export.pipeline.verify_directory``), int8 quantization (``export.quantize``), the per-layer quantization report
(``export.quant_report``) and one backend module per format (``export.backends``)."""
