"""The `prov` command line: thin commands over library calls."""
