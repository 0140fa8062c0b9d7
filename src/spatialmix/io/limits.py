"""What training and the run-folder reader agree on about config.json: how large a run may be,
and which of its settings change only its speed.

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


# How fast a run goes, not what it computes: these may differ between a run and its resumption
# (and between two runs that count as the same config).
SPEED_FIELDS = frozenset({"device", "progress", "workers", "threads", "data_dir", "download"})
