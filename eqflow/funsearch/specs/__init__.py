"""Problem specifications shipped with eqflow (``deletion_codes`` is the default)."""
