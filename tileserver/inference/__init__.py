"""Model bundles and where they run: bundle loading and checks (``bundle``), ONNX
Runtime sessions and the engine (``engine``), the bounded queue (``queue``), halo
measurement (``halo``). Nothing here knows about slides, tiles or HTTP."""
from tileserver.inference.bundle import BUNDLE_FORMAT, DEFAULT_BUNDLE, Bundle, BundleError, load_bundle
from tileserver.inference.engine import Engine, create_sessions, session_options, to_float, to_uint8
from tileserver.inference.queue import QueueFull

__all__ = ["BUNDLE_FORMAT", "DEFAULT_BUNDLE", "Bundle", "BundleError", "Engine", "QueueFull", "create_sessions", "load_bundle",
           "session_options", "to_float", "to_uint8"]
