"""lut: not implemented yet (see the open issues)."""
