"""Transports to web hosts other than this machine (``LocalHost`` lives in release.py)."""
