"""Compatibility for ``training/upscale.py``, which imports these names from here: the
engine lives in ``tileserver.inference`` now. Remove once training imports from there."""
from tileserver.inference.engine import create_sessions, load_bundle, to_float, to_uint8

__all__ = ["create_sessions", "load_bundle", "to_float", "to_uint8"]
