"""The package version, read by pyproject.toml (``[tool.setuptools.dynamic]``) and the Hub client."""

__version__ = "0.1.0"
