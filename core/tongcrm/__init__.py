"""tongcrm: one member base for brands that sell on Taobao/Tmall, JD and in their own stores."""

from importlib import metadata

try:
    __version__ = metadata.version("tongcrm")
except metadata.PackageNotFoundError:  # pragma: no cover - source tree without an install
    __version__ = "0+unknown"
