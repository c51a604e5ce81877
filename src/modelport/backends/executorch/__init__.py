"""ExecuTorch with the XNNPACK delegate: the ``edge-xnnpack`` profile.

``convert.py`` lowers the PyTorch reference (not the ONNX export: ``Converter.source`` is PYTORCH) with
``torch.export`` → ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`` → a ``model.pte`` program,
at FP32 or INT8 (PT2E with the XNNPACK quantizer, calibrated on the calibration feeds). ``runtime.py`` runs the
program with ExecuTorch's own runtime (``executorch.runtime``), the one a phone or an embedded board runs.

Nothing heavy is imported here: ``executorch`` is an optional extra (``pip install 'modelport[executorch]'``).
"""
