"""The preview command: Figure-2-like PNG and animated GIF of one clip per class."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lightning_ttn.data.preview import main, preview_clips
from lightning_ttn.data.video_mnist import FRAMES


def test_preview_writes_png_and_gif(tmp_path):
    png, gif = tmp_path / "p.png", tmp_path / "p.gif"
    main(["--preview", str(png), "--gif", str(gif), "--seed", "3"])
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
    with Image.open(gif) as im:
        assert im.n_frames == FRAMES
        assert im.size == (3 * (10 * 30 - 2), 3 * 28)  # ten 28 px clips, 2 px apart, zoom 3


def test_preview_draws_the_chosen_motion(tmp_path):
    paths = {m: tmp_path / f"{m}.png" for m in ("table1", "authors")}
    for motion, path in paths.items():
        main(["--preview", str(path), "--motion", motion])
    pixels = {m: np.asarray(Image.open(p).convert("L")) for m, p in paths.items()}
    assert pixels["table1"].shape == pixels["authors"].shape
    assert not np.array_equal(pixels["table1"], pixels["authors"])
    # the authors' class 2 ends blank, table1's does not
    assert not preview_clips(motion="authors")[2, -1].any()
    assert preview_clips(motion="table1")[2, -1].any()


def test_preview_rejects_an_unknown_motion(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--preview", str(tmp_path / "p.png"), "--motion", "paper"])
    assert "invalid choice: 'paper'" in capsys.readouterr().err
