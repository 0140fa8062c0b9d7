"""What training and the run-folder reader agree on about config.json: how large a run may be,
which of its settings change only its speed, and how large a file read from a run may be.

Kept apart from both and free of torch, so the command line can check a size before anything loads.
"""

# The largest sizes a run may have: training refuses more, and a run folder's config.json asking for
# more is refused before anything is built (a damaged or hostile file must not allocate a giant model).
SIZE_LIMITS = {
    "width": 4096,
    "depth": 256,
    "kernel_size": 63,
    "patch_size": 64,
    "token_hidden": 16384,
    "channel_hidden": 16384,
    "in_chans": 256,
    "num_classes": 100_000,
    "image_size": 2048,
}

# Sizes that pass one by one can still multiply into a model no machine holds (width 4096 and depth
# 256 with channel_hidden 16384; an MLP-Mixer of 2048-pixel images in 1-pixel patches has 4 million
# tokens): the model a config builds may have at most this many parameters and, for one training
# batch, this many activations (every layer's output). ConvMixer-1536/20 on ImageNet (patch 7, batch
# 128), the paper's largest, has 52 million parameters and 25 billion activations per batch.
MAX_PARAMETERS = 2**31
MAX_ACTIVATIONS = 2**36

# Whole-number settings that reach C code, as (lowest, highest): a seed must fit torch's 64-bit
# generators, and a thread or process count beyond a machine's is a typo or a hostile file (10**12
# threads fails inside torch).
SETTING_RANGES = {
    "seed": (-(2**63), 2**64 - 1),
    "init_seed": (-(2**63), 2**64 - 1),
    "threads": (1, 1024),
    "workers": (0, 1024),
}


def out_of_range(values: dict) -> tuple[str, int, int, int] | None:
    """``(name, value, lowest, highest)`` of the first whole number of ``values`` outside
    `SETTING_RANGES`; None when all are inside (other types are the type check's to refuse)."""
    for name, (lowest, highest) in SETTING_RANGES.items():
        value = values.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and not lowest <= value <= highest:
            return name, value, lowest, highest
    return None


# How fast a run goes, not what it computes: these may differ between a run and its resumption
# (and between two runs that count as the same config).
SPEED_FIELDS = frozenset({"device", "progress", "workers", "threads", "data_dir", "download"})

# Files read from a run or study folder may come from anyone: each kind is read only up to a size
# (a hostile file could be endless), and JSON only up to a nesting depth and a number length that
# spatialmix never writes (Python's parser recurses, and converting a 5,000-digit number fails).
RECORD_BYTES = 4 << 20  # config.json, status.json, summary.json, checkpoints/latest.json
RESULT_BYTES = 64 << 20  # metrics.jsonl, robustness.json, results.json and other result files
WEIGHTS_BYTES = 16 << 30  # model.safetensors, train_state.pt, init.safetensors
JSON_DEPTH = 32
JSON_INT_DIGITS = 40
