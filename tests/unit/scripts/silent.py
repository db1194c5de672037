"""Exits 0 having printed nothing."""
