"""Data sets by name, fixed seeded splits on the training device, and device-side batches.

``load_dataset("digits")`` (offline, bundled with scikit-learn) or ``"mnist"``,
``"fashion-mnist"``, ``"cifar10"``, ``"svhn"`` (torchvision files under ``root``;
``download=True`` to fetch them), ``"imagefolder"`` (any folder-per-class tree or a tar
archive of one) or ``"imagenet"`` (a local train/ and val/ folder by synset) returns
:class:`DataSplits` of float32 tensors in [0, 1] on ``device``, or of streamed images
read from their files batch by batch (``stream``; :mod:`.stream`).
:func:`iterate_batches` slices them into batches, optionally through an
:class:`Augmentation` that runs on the same device.
"""

from . import digits as _digits  # noqa: F401  (registers "digits")
from . import imagefolder as _imagefolder  # noqa: F401  (registers "imagefolder")
from . import stream as _stream  # noqa: F401  (registers "imagenet"; streamed splits)
from . import torchvision_sets as _torchvision_sets  # noqa: F401  (registers the torchvision sets)
from .base import DATASETS, DataSplits, RawData, dataset_options, stratified_pick
from .batches import Augmentation, iterate_batches
from .imagefolder import default_cache_dir
from .section import AugmentConfig, DataConfig, load_dataset, load_section

__all__ = [
    "DATASETS",
    "AugmentConfig",
    "Augmentation",
    "DataConfig",
    "DataSplits",
    "RawData",
    "dataset_options",
    "default_cache_dir",
    "iterate_batches",
    "load_dataset",
    "load_section",
    "stratified_pick",
]
