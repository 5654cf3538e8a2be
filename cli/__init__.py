"""The ``unibias`` command line; the entry point is :func:`unibias.cli.main.main`."""
