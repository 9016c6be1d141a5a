"""Clowder."""
