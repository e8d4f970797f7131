"""precision-lab: measure cross-entropy's floating-point error against a correctly rounded truth."""

__version__ = "0.2.0"
