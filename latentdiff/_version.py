"""The package version, in a module of its own so that any layer can import it (the package's
``__init__`` is the top layer: it re-exports the pipeline)."""

__version__ = "0.1.0"
