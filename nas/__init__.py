"""nas: not implemented yet (see the open issues)."""
