"""Outputs are written through private temporary names, but land with the user's usual permissions."""

import os
import stat

from PIL import Image

from pali import PaliModel
from pali.io import current_umask
from pali.cli.common import save_image


def test_saved_checkpoint_and_png_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        PaliModel.from_preset("pali-tiny").save_pretrained(tmp_path / "model")
        save_image(Image.new("RGB", (4, 4)), tmp_path / "boxes.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "model").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "boxes.png").st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
