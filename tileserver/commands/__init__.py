"""The command line: `tileserver serve | ingest | demo`."""
