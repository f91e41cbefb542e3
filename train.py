"""Train, validate or test on Video-MNIST: ``python train.py fit --config configs/...``."""

from lightning_ttn.training.cli import main

if __name__ == "__main__":
    main()
