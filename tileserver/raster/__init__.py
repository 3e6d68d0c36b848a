"""Pixels: pure geometry, the slide catalog and stored rasters, synthesized planes built block by block, caches, and the tile service."""
