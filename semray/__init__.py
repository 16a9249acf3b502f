"""semray: unsupervised defect detection in SEM images of nanofibrous materials, on Ray."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_run"]


def __getattr__(name: str):
    """`semray.load_run` without importing torch for `import semray` (the CLI's --version stays fast)."""
    if name == "load_run":
        from semray.predict import load_run

        return load_run
    raise AttributeError(f"module 'semray' has no attribute {name!r}")
