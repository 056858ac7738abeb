"""Slow reference implementations transcribed from the specifications, for differential tests.

They share no code with ``kluis.protocol`` beyond pyca's curve and KEM operations; in particular
HKDF here is RFC 5869 written over the standard library's ``hmac``, not pyca's HKDF.
"""
