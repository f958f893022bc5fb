"""A pool's slots shared fairly between keys by every gateway process (see service.py)."""
