"""Serving a bundle over HTTP: `cnntool serve BUNDLE`.

`app` builds the FastAPI app, `service` owns the model and its one kernel thread,
`batching` groups concurrent requests into one network call, `inputs` turns request bodies
into model input, `middleware` caps bodies and counts traffic, `metrics` writes the
Prometheus text, and `static/index.html` is the drawing page. Importing this package loads
FastAPI, so the command line imports it only when `serve` runs.
"""

from cnntool.serve.app import create_app
from cnntool.serve.service import ServeSettings

__all__ = ["ServeSettings", "create_app"]
