"""Train, validate or test a Video-MNIST classifier: ``python train.py fit --config configs/...``."""

from lightning_ttn.cli import main

if __name__ == "__main__":
    main()
