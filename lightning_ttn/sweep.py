"""``python -m lightning_ttn.sweep``: see :mod:`lightning_ttn.protocol.runner`."""

from lightning_ttn.protocol.runner import main

if __name__ == "__main__":
    main()
