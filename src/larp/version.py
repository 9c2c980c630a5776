"""The package version, in its own module so that any module can read it without importing ``larp``."""

__version__ = "0.2.0.dev0"
