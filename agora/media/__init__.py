"""Media: the image pipeline (imaging.py) and where the bytes are kept (storage.py)."""
