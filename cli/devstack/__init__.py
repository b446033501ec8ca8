"""Local instances of the real components (nginx, PowerDNS) for ``make run`` and the tests.

Each runs as an unprivileged-port process with its state in a directory we own.
"""
