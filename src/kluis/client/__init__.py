"""The Kluis client SDK (async). For now: the relay transport (transport.py)."""
