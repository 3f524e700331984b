"""`cnntool.schedules`: learning-rate schedules, a public name kept for users and plugins.

The code lives in `cnntool.training.schedules`; this module only re-exports it (docs/architecture.md).
Code inside cnntool imports the home module, never this one (an import-linter contract).
"""

from cnntool.training.schedules import *  # noqa: F403
from cnntool.training.schedules import __all__  # noqa: F401
