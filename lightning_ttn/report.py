"""``python -m lightning_ttn.report``: see :mod:`lightning_ttn.protocol.report`."""

from lightning_ttn.protocol.report import main

if __name__ == "__main__":
    main()
