"""`cnntool.train`: the training loop (fit, evaluate, Trainer), a public name kept for users and plugins.

The code lives in `cnntool.training.loop`; this module only re-exports it (docs/architecture.md).
Code inside cnntool imports the home module, never this one (an import-linter contract).
"""

from cnntool.training.loop import *  # noqa: F403
from cnntool.training.loop import __all__  # noqa: F401
