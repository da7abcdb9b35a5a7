"""padim: unsupervised visual inspection with PaDiM (fit on good images only)."""

__version__ = "0.1.0"
__all__ = ["PaDiM", "__version__"]


def __getattr__(name):
    # Imported lazily so that light modules (metrics, viz, io) do not pay for importing torch.
    if name == "PaDiM":
        from .model import PaDiM

        return PaDiM
    raise AttributeError(f"module 'padim' has no attribute {name!r}")
