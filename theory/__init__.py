"""Symbolic theory."""
