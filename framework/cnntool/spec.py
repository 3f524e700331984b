"""`cnntool.spec`: network specs and their validation, a public name kept for users and plugins.

The code lives in `cnntool.model.spec`; this module only re-exports it (docs/architecture.md).
Code inside cnntool imports the home module, never this one (an import-linter contract).
"""

from cnntool.model.spec import *  # noqa: F403
from cnntool.model.spec import __all__  # noqa: F401
