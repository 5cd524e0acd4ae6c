"""Benchmarks run from the command line (`shoshin bench ...`): comparisons made of ordinary runs."""
