"""Search: the query language shared by every search backend."""
