"""The load test program, ``python -m scripts.load`` (``just load``); its command line is in __main__.py."""
