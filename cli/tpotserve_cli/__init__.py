"""tpotserve's Python client and command line (the ``tpotserve`` console script)."""

from .client import (
    DEFAULT_URL,
    Client,
    Prediction,
    TpotServeAPIError,
    TpotServeConnectionError,
    TpotServeError,
)

__all__ = [
    "DEFAULT_URL",
    "Client",
    "Prediction",
    "TpotServeAPIError",
    "TpotServeConnectionError",
    "TpotServeError",
]
__version__ = "0.1.0"
