"""The package version, recorded in every cache manifest."""

__version__ = "0.1.0"
