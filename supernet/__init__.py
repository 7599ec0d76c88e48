"""supernet: not implemented yet (see the open issues)."""
