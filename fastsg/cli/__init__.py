"""The ``fastsg`` command line (click).  Commands parse options and call the library;
all terminal output goes through ``terminal.py``."""
