"""Data for the fine-tuning and augmentation figures of docs/training.md.

    python tools/fine_tune_demo_data.py OUT_DIR

writes, from Debian's Fashion-MNIST and the bundled MNIST sample:

- OUT_DIR/clothes.npz: the Fashion-MNIST training and test images of T-shirt/top, Trouser,
  Pullover, Dress and Coat (the base model's task);
- OUT_DIR/shoes-and-bags/{train,test}/<class>/*.png: a small picture folder of the other five
  classes (Sandal, Shirt, Sneaker, Bag, Ankle boot), 20 training pictures per class and 200
  test pictures per class, from the test split (images the base model never saw);
- OUT_DIR/fashion-pictures/{train,test}/<class>/*.png: a small picture folder of all ten
  Fashion-MNIST classes, 10 training and 200 test pictures per class, from the test split
  (images a model trained on Fashion-MNIST's training split never saw);
- OUT_DIR/digits-500.npz: 500 training digits of the bundled sample (50 per class) and all
  1,000 of its test digits, a small training set for augmentation.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

import cnntool

BASE = (0, 1, 2, 3, 4)
NEW = {5: "Sandal", 6: "Shirt", 7: "Sneaker", 8: "Bag", 9: "Ankle boot"}
TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 200


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fashion = cnntool.load_dataset("fashion-mnist")
    keep_train, keep_test = np.isin(fashion.y_train, BASE), np.isin(fashion.y_test, BASE)
    np.savez(
        out / "clothes.npz", x_train=fashion.x_train[keep_train], y_train=fashion.y_train[keep_train],
        x_test=fashion.x_test[keep_test], y_test=fashion.y_test[keep_test],
        classes=np.array([fashion.classes[label] for label in BASE]),
    )  # fmt: skip
    folder = out / "shoes-and-bags"
    for label, name in NEW.items():
        members = np.flatnonzero(fashion.y_test == label)
        parts = {"train": members[:TRAIN_PER_CLASS], "test": members[TRAIN_PER_CLASS:][:TEST_PER_CLASS]}
        for part, indices in parts.items():
            (folder / part / name).mkdir(parents=True, exist_ok=True)
            for index in indices:
                Image.fromarray(fashion.x_test[index, 0]).save(folder / part / name / f"{index}.png")
    for label, name in enumerate(fashion.classes):
        members = np.flatnonzero(fashion.y_test == label)[-(10 + TEST_PER_CLASS) :]
        for part, indices in (("train", members[:10]), ("test", members[10:])):
            target = out / "fashion-pictures" / part / name.replace("/", "-")
            target.mkdir(parents=True, exist_ok=True)
            for index in indices:
                Image.fromarray(fashion.x_test[index, 0]).save(target / f"{index}.png")
    sample = cnntool.load_dataset("mnist-sample")
    chosen = np.sort(np.concatenate([np.flatnonzero(sample.y_train == digit)[:50] for digit in range(10)]))
    np.savez(
        out / "digits-500.npz", x_train=sample.x_train[chosen], y_train=sample.y_train[chosen],
        x_test=sample.x_test, y_test=sample.y_test,
    )  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
