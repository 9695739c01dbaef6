"""County VPP controller: peak-free feed-in under an export cap, from forecasts and measurements."""

__version__ = "0.1.0"

__all__ = ["__version__"]
