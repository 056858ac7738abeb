"""The sans-I/O cryptographic core: keys, PQXDH, Double Ratchet, sealed envelopes, padding, safety numbers.

No sockets, files, clocks or global randomness: ``rng`` and ``now`` are arguments.
"""
