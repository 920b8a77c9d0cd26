"""Reliability and security tests: fuzzers, the authorization matrix, fault injection.

Each runs in ``make test`` in a bounded form; ``make reliability`` runs the same
tests longer (``HUDDLE_RELIABILITY=full``, read through :mod:`tests.reliability.scale`).
"""
