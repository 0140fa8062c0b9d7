"""The names a user types for modes, inits, augmentations, data sets and models, in one torch-free table.

The command line checks a configuration against these before torch is imported, so a mistyped
name is answered at once. The modules that implement each name hold the one table of what it
does (``spatialmix.data.datasets.DATASETS``, the model registry, ...); ``tests/test_names.py``
checks that both list the same names.
"""

MODES = ("full", "chans", "space")
"""The three training modes: `full` learns every layer, `chans` freezes the spatial mixers at their
init, `space` freezes the channel mixers."""
INITS = ("default", "gaussian", "uniform", "covariance", "covariance-from")
AUGMENTATIONS = ("none", "flip", "crop", "crop-flip")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
MODELS = (
    "convmixer",
    "convmixer-128/6",
    "convmixer-256/8",
    "convmixer-768/32",
    "convmixer-1024/20",
    "convmixer-1536/20",
    "mlpmixer",
    "mlpmixer-128/6",
    "mlpmixer-256/8",
    "resnet",
    "resnet-sep",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet18-sep",
    "resnet34-sep",
    "resnet50-sep",
    "resnet101-sep",
    "unshufflenet",
)
LIBRARY_PREFIXES = ("timm:", "torchvision:")  # any model of these libraries, by its name there
