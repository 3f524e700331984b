"""`cnntool.registry`: the registry of layer types, a public name kept for users and plugins.

The code lives in `cnntool.model.registry`; this module only re-exports it (docs/architecture.md).
Code inside cnntool imports the home module, never this one (an import-linter contract).
"""

from cnntool.model.registry import *  # noqa: F403
from cnntool.model.registry import __all__  # noqa: F401
