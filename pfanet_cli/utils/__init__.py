"""Helpers every layer uses: atomic writes, the console, image files and pictures."""
