"""MSR Tile Server: store slides at 5X, synthesize 10X/20X/40X tiles on request."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("msr-tileserver")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
