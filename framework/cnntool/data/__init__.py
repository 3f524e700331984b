"""Datasets for training and evaluation, and input files for inference."""

from cnntool.data.dataset import (
    DEFAULT_PREPROCESSING,
    Dataset,
    input_scale,
    load_dataset,
    preprocess,
    preprocessing_for,
    split_validation,
)
from cnntool.data.images import load_image, load_input_file

__all__ = [
    "DEFAULT_PREPROCESSING",
    "Dataset",
    "input_scale",
    "load_dataset",
    "load_image",
    "load_input_file",
    "preprocess",
    "preprocessing_for",
    "split_validation",
]
