"""Serving a bundle over HTTP: `cnntool serve BUNDLE`.

`app` builds the FastAPI app, `models` holds the served models by name and swaps in a
replaced bundle, `service` owns one model and its kernel thread, `batching` groups concurrent
requests into one network call, `inputs` turns request bodies into model input, `oip` speaks
the Open Inference Protocol v2, `middleware` caps bodies, asks for the API key and counts
traffic, `metrics` writes the Prometheus text, and `static/index.html` is the drawing page.
Importing this package loads FastAPI, so the command line imports it only when `serve` runs.
"""

from cnntool.serve.app import create_app
from cnntool.serve.service import ServeSettings

__all__ = ["ServeSettings", "create_app"]
