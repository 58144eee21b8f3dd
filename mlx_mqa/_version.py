"""The package version, apart from everything else so any module can import it without cycles."""

__version__ = "0.1.0"
