"""Interchange: cnntool networks to and from other frameworks' files.

- `onnx_export`: a bundle as an ONNX inference graph (each layer lowers itself through
  `Layer.onnx_nodes`);
- `onnx_import`: an ONNX graph made of the ops cnntool's layers cover, as a spec and weights;
- `safetensors_io`: weights as safetensors, out with the spec in the metadata, and in by name
  or, for another framework's names, by order and shape;
- `common`: the optional libraries (the `onnx` extra), limits on a stranger's file, the
  metadata keys, and building the imported bundle.

`export_file` and `import_file` pick the format from the file's suffix. onnx and safetensors
are imported only when a command needs them.
"""
