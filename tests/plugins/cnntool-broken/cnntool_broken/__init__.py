"""A plugin whose every entry point is broken in its own way (see the pyproject.toml)."""
