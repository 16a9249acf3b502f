"""semray: unsupervised defect detection in SEM images of nanofibrous materials, on Ray."""

__version__ = "0.1.0"
