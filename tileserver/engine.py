"""Compatibility for ``training/upscale.py``, which imports these names from here: they
live in ``tileserver.inference`` now. Remove once training imports them from there."""
from tileserver.inference import create_sessions, load_bundle, to_float, to_uint8

__all__ = ["create_sessions", "load_bundle", "to_float", "to_uint8"]
