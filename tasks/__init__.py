"""Steps that touch the world. Each task says in its docstring what it changes."""
