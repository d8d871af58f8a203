"""Members: the one member base every channel feeds."""
