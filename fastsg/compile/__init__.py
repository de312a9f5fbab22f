"""World -> immutable numpy tables (see compiler.py for the incremental part)."""
