"""Benchmarks behind ``kluis bench``: each figure is measured beside a reference in the same run."""
