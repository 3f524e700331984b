"""`cnntool.optim`: the optimizers (SGD, Adam, AdamW), a public name kept for users and plugins.

The code lives in `cnntool.training.optim`; this module only re-exports it (docs/architecture.md).
Code inside cnntool imports the home module, never this one (an import-linter contract).
"""

from cnntool.training.optim import *  # noqa: F403
from cnntool.training.optim import __all__  # noqa: F401
