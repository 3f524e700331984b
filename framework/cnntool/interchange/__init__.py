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

from __future__ import annotations

import os
from typing import Any

from cnntool.bundle import load_bundle
from cnntool.errors import InterchangeError
from cnntool.interchange.common import file_format
from cnntool.interchange.onnx_export import export_onnx
from cnntool.interchange.onnx_import import import_onnx
from cnntool.interchange.safetensors_io import export_safetensors, import_safetensors

__all__ = ["export_file", "import_file"]


def export_file(
    bundle_path: str | os.PathLike, out: str | os.PathLike, *, fmt: str | None = None, softmax: bool = False
) -> dict:
    """Write a bundle's network as ONNX or its weights as safetensors (by `out`'s suffix, or
    `fmt`); return what was written."""

    fmt = file_format(out, fmt)
    if softmax and fmt != "onnx":
        raise InterchangeError("--softmax adds an ONNX output; safetensors files hold weights only")
    bundle = load_bundle(bundle_path)
    if fmt == "onnx":
        return export_onnx(bundle, out, softmax=softmax)

    return export_safetensors(bundle, out)


def import_file(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    spec: Any = None,
    classes: list[str] | None = None,
    preprocessing: Any = None,
) -> dict:
    """Make a bundle at `out` from an ONNX model, or from a safetensors file of weights and a
    spec (`spec`, or the one in the file's metadata); return what was done."""

    fmt = file_format(source, fmt)
    if fmt == "onnx":
        if spec is not None:
            raise InterchangeError("--spec is for safetensors; an ONNX model carries its own network")

        return import_onnx(source, out, classes=classes, preprocessing=preprocessing)

    return import_safetensors(source, out, spec=spec, classes=classes, preprocessing=preprocessing)
