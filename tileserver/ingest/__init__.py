"""WSI -> stored 5X slide: read the source, degrade it band by band, write the pyramidal TIFF with its provenance."""
