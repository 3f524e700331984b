"""Model bundles: one msgpack map per file, safe to read from a stranger.

Layout (format_version 1), in this order:

    format: "cnntool.bundle"    format_version: 1
    spec:      the validated spec, every layer name explicit
    weights:   {"<layer>.<param>": {dtype, shape, data}}   (data: little-endian bytes)
    state:     the same form, for non-trained buffers
    optimizer: {} or {type, hyper, steps, slots: {slot: {key: tensor}}}
    meta:      {cnntool_version, created_at, providers, history, dataset, preprocessing, ...}
    digest:    "sha256:<hex>" over weights then state: for each key in sorted order, the key,
               dtype, shape and data; identifies the model
    checksum:  "sha256:<hex>" over the packed bytes of every entry before it; catches a
               damaged byte anywhere, meta and spec included

Reading never runs code: no pickle, no extension types, a size cap on the file, limits on
every msgpack container, nesting depth checked, a dtype whitelist, `prod(shape) * itemsize ==
len(data)` checked with Python integers before any array exists, weights matched against
the shapes the spec builds, digest and checksum verified. Anything wrong is a BundleError
that says what. Writing is atomic: temporary file in the same folder, fsync, rename.

The modules: `format` (sections, limits, digest), `write` (save_bundle), `read` (read and
verify, no code runs), `load` (build a verified document into a network).
"""

from cnntool.bundle.format import FORMAT, FORMAT_VERSION, SUPPORTED_VERSIONS, Bundle, RawBundle, model_digest
from cnntool.bundle.load import (
    build_bundle,
    check_arrays,
    load_bundle,
    load_bundle_bytes,
    missing_layer_types,
)
from cnntool.bundle.read import decode_tensors, max_bundle_bytes, parse_bundle, read_bundle, read_limited
from cnntool.bundle.write import save_bundle

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "Bundle",
    "RawBundle",
    "build_bundle",
    "check_arrays",
    "decode_tensors",
    "load_bundle",
    "load_bundle_bytes",
    "max_bundle_bytes",
    "missing_layer_types",
    "model_digest",
    "parse_bundle",
    "read_bundle",
    "read_limited",
    "save_bundle",
]
