"""The torch-free table of names (what the command line checks before torch loads) lists exactly what
the modules that implement them have."""

from __future__ import annotations

import subprocess
import sys

from conftest import SUBPROCESS_ENV
from spatialmix import names
from spatialmix.core import inits, mixing
from spatialmix.data import batches, datasets
from spatialmix.models.factory import list_models


def test_the_names_are_the_implementations_names():
    assert mixing.MODES == names.MODES and inits.INITS == names.INITS
    assert batches.AUGMENTATIONS == names.AUGMENTATIONS
    assert tuple(datasets.DATASETS) == names.DATASETS
    builtin = [m for m in list_models() if not m.endswith(":NAME")]
    assert sorted(builtin) == sorted(names.MODELS)


def test_a_bad_configuration_is_refused_before_torch_is_imported():
    """A mistyped name or a bad value is answered from the names alone: torch is never imported."""
    script = (
        "import sys\n"
        "from spatialmix.cli.main import main\n"
        "for argv in (['train', '--model', 'convmixr'], ['train', '--mode', 'chanz'],\n"
        "             ['train', '--epochs', '0'], ['train', '--dataset', 'fmnist'],\n"
        "             ['train', '--width', '8', '--model', 'timm:convnext_atto'],\n"
        "             ['train', '--spatial-init', 'gauss']):\n"
        "    assert main(argv) == 2, argv\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", proc.stderr
    assert "did you mean 'convmixer'?" in proc.stderr and "unknown mode 'chanz'" in proc.stderr
