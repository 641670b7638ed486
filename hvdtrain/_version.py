"""The package version, in one place: setup.py, checkpoints and ``hvdtrain.__version__`` read it."""
__version__ = "0.1.0"
