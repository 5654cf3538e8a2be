"""The ``unibias`` command line; the entry point is :func:`unibias.cli.entry.main`."""
