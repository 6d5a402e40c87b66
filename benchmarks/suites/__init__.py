"""The suites: each module has ``main(argv) -> int`` and a docstring saying what it measures."""
