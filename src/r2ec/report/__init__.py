"""Tables, figures and significance tests built from run directories (never from a method's internals)."""
