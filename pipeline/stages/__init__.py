"""Built-in stage types of the spine (one module per type)."""
