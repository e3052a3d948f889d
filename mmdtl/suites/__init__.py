"""``tools/run_suite.py``'s suites as a library: suite definitions, the runs they
expand to, result collection and the tables they print."""
