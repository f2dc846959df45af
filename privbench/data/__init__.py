"""Data: datasets (embedded, torchvision layouts, image folders, your own tensors) and the
partitions that split a training set across clients."""

from privbench.data.datasets import (
    DATASETS,
    PHOTO_NAMES,
    DataBundle,
    as_bundle,
    load_dataset,
)

__all__ = ["DATASETS", "PHOTO_NAMES", "DataBundle", "as_bundle", "load_dataset"]
