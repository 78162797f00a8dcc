"""Shared kernel: the small set of modules every service and the gateway import.

Nothing in here connects to anything at import time.
"""
