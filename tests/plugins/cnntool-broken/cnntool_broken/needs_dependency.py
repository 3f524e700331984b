"""A module importing a dependency that is not installed."""

import cnntool_missing_dependency  # noqa: F401
