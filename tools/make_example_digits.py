"""Write the example images `cnntool infer` is shown on in the README's demo.

Three test digits of the bundled MNIST sample as 28x28 PNGs, and one of them drawn large,
dark on white, as a photo of a handwritten digit would be, to show the MNIST-style
conversion (invert, crop, scale to 20 px, centre by mass). Run from the repository root:

    python tools/make_example_digits.py models/digits
"""

import sys
from pathlib import Path

from PIL import Image

from cnntool.data import load_dataset

PICKS = {"2": 252, "7": 797, "9": 989}


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sample = load_dataset("mnist-sample")
    for label, index in PICKS.items():
        assert str(sample.y_test[index]) == label, (index, sample.y_test[index])
        Image.fromarray(sample.x_test[index, 0]).save(out / f"digit_{label}.png", optimize=True)
    large = Image.fromarray(255 - sample.x_test[PICKS["7"], 0]).resize((140, 180), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (200, 240), 255)
    canvas.paste(large, (20, 30))
    canvas.save(out / "photo_7.png", optimize=True)
    print("wrote", ", ".join(sorted(p.name for p in out.glob("*.png"))))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/digits")
