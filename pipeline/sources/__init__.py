"""Built-in offline sources."""
