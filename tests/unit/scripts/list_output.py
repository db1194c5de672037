"""Prints a JSON array, not an object."""
print("[1, 2, 3]")
