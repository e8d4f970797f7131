"""The numerical core: formats, correct rounding, error metrics, the certified reference, error
bounds and sums in a format's arithmetic.  numpy and mpmath only: no I/O, no prose."""
