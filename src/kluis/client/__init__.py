"""The Kluis client SDK (async).

So far: the relay transport (``transport.py``: HTTP calls, the authenticated mailbox stream and the
anonymous sending stream) and the device's encrypted storage (``keyslots.py``: the passphrase and
duress key slots; ``store.py``: the SQLCipher profile database; ``profile.py``: creating, unlocking
and crypto-erasing a profile). The messaging SDK built on them comes with the client issue.
"""
