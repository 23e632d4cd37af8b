"""Built-in offline sinks."""
