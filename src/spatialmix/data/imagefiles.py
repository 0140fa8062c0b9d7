"""The image files of an image folder: each found once, and read with a one-line error.

torchvision's ``ImageFolder`` walks each class folder with ``os.walk(followlinks=True)``: a link
back up the tree (``train/cat/up -> ..``) is walked again and again, until the paths grow too long,
and counts the same images many times (12 images became 492), in the wrong classes too. Here
every folder is walked once, a link to a folder above is not followed, each file (once links are
resolved) is counted once, and a file or folder reached from two classes is refused. Files are
checked when they are read, not up front (opening ImageNet's 1.3 million files first would add a
pass over the whole data set to every start): one that PIL cannot read is a one-line error naming it.

Imports torchvision (seconds): `spatialmix.data.imagefolder` imports this module only when an
image folder is loaded.
"""

from __future__ import annotations

import os

import torchvision
from PIL import Image, UnidentifiedImageError

from spatialmix.errors import SpatialmixError


def read_rgb(path: str) -> Image.Image:
    """The image at ``path`` as RGB; a file PIL cannot read is one line naming it."""
    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, UnidentifiedImageError):
            reason = "not in an image format PIL knows"
        else:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise SpatialmixError(
            f"{path} is not an image PIL can read ({reason}); remove it from the folder or replace "
            f"it with a readable image"
        ) from None


def _refuse_second_class(path: str, first: str, second: str) -> SpatialmixError:
    return SpatialmixError(
        f"{path} is reached from the class folders {first!r} and {second!r} (through a symbolic "
        f"link): an image can have one class; remove the link"
    )


class _Walk:
    """One split's walk: which real folders and files were found, and by which class."""

    def __init__(self, extensions: tuple[str, ...]):
        self.extensions = extensions
        self.folders: dict[str, str] = {}  # real path -> the class that walked it
        self.files: dict[str, str] = {}  # real path -> the class that has it

    def class_files(self, top: str, label: str) -> list[str]:
        """The image files below ``top`` (class ``label``), in torchvision's order (by folder, then
        name)."""
        found: dict[str, list[str]] = {}
        pending = [top]
        while pending:
            folder = pending.pop()
            real = os.path.realpath(folder)
            if not self._first_visit(real, folder, self.folders, label):
                continue  # a second way into a folder of this class: its files are counted once
            found[folder] = []
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir():
                        if not _leads_back(real, os.path.realpath(entry.path)):
                            pending.append(entry.path)
                    elif entry.name.lower().endswith(self.extensions) and self._first_time(
                        entry, real, label
                    ):
                        found[folder].append(entry.name)
        return [os.path.join(folder, name) for folder in sorted(found) for name in sorted(found[folder])]

    def _first_time(self, entry: os.DirEntry, real_folder: str, label: str) -> bool:
        """Whether the file of ``entry`` is new to the split (a second name for a file of the same class
        is not; one of another class is refused)."""
        real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_folder, entry.name)
        return self._first_visit(real, entry.path, self.files, label)

    @staticmethod
    def _first_visit(real: str, path: str, owners: dict[str, str], label: str) -> bool:
        """Record that class ``label`` reached ``real`` (through ``path``); False if it had before, an
        error if another class had."""
        owner = owners.get(real)
        if owner is None:
            owners[real] = label
            return True
        if owner != label:
            raise _refuse_second_class(path, owner, label)
        return False


def _leads_back(folder: str, target: str) -> bool:
    """A link from ``folder`` to itself or to a folder above it: following it is a loop."""
    return folder == target or folder.startswith(target.rstrip(os.sep) + os.sep)


def find_images(
    directory: str,
    class_to_idx: dict[str, int],
    extensions: tuple[str, ...] | None = None,
    is_valid_file=None,
    allow_empty: bool = False,
) -> list[tuple[str, int]]:
    """``(path, class index)`` of every image file below ``directory/CLASS``, as torchvision's
    ``make_dataset`` gives them but with each file once and no loops (see the module doc)."""
    if is_valid_file is not None:
        raise ValueError("image folders are selected by extension, not by is_valid_file")
    walk = _Walk(tuple(extensions or torchvision.datasets.folder.IMG_EXTENSIONS))
    samples, empty = [], []
    for name in sorted(class_to_idx):
        top = os.path.join(directory, name)
        files = walk.class_files(top, name) if os.path.isdir(top) else []
        samples += [(path, class_to_idx[name]) for path in files]
        if not files:
            empty.append(name)
    if empty and not allow_empty:
        raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
    return samples


class ImageFiles(torchvision.datasets.ImageFolder):
    """torchvision's ``ImageFolder`` over the files `find_images` finds, read by `read_rgb`."""

    def __init__(self, root: str, transform=None):
        super().__init__(root, transform=transform, loader=read_rgb)

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        return find_images(directory, class_to_idx, extensions, is_valid_file, allow_empty)
