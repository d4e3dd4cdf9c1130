"""A directory of image files (any common format) as a dataset, with optional classes and captions.

Layout (the Hugging Face "imagefolder" conventions):
  root/**/*.{png,jpg,jpeg,jfif,bmp,gif,webp,tif,tiff}   every image file, recursively, sorted by path;
  root/<class>/...        with ``labels="auto"`` (two or more class folders, no images directly in root)
                          or ``labels="folders"``, the first folder below root is the class; classes are
                          sorted by name and stored as ``dataset.classes``;
  root/metadata.jsonl     optional, one JSON object per line with ``file_name`` (relative to root) and
                          ``text`` or ``caption``; when present, the files it lists *are* the dataset
                          (other images are ignored, so exported masks or edge maps beside them are not
                          read as data). Hidden files and folders are ignored.
  embeddings              optional per-image embeddings (the ``embedding`` condition kind): an ``.npz``
                          (option ``embeddings``, e.g. ``photos.npz`` beside ``photos/``) with one array per
                          image keyed by its ``file_name`` (path relative to root), or a ``metadata.jsonl``
                          key (option ``embedding_key``) holding a list of D numbers or of L lists of D.
                          Each is a ``(D,)`` vector or ``(L, D)`` sequence, all of one shape; every image
                          needs one.

Decoding: EXIF orientation applied; transparency composited on white; palette, 16-bit (scaled, not
clipped), CMYK, greyscale converted to ``channels`` (3 or 1); shorter side resized to ``size`` and
centre-cropped, antialiased (see :mod:`denoisekit.data.transforms`); optional horizontal flip with
probability ``flip_p``, a pure function of ``(seed, epoch, index)`` (call :meth:`set_epoch`).

At construction every file is checked (``verify="quick"``: header, pixel count and PIL's ``verify``,
which catches empty, non-image, corrupt and truncated PNG files, and a look at the end of JPEG, GIF and
BMP files, which catches cut ones; ``"full"`` also decodes every file, which catches the rest, such as a
cut TIFF). Unusable files are skipped with one warning listing them, and kept with their reasons in
``dataset.skipped``; if none remain, ``ValueError``. A file that still fails to decode when an item is
read is replaced by the next index that decodes (a deterministic substitute, so a resumed run reads the
same data), with a warning naming it; more than :func:`max_undecodable` such files stop with a
``ValueError``. Images with more than
``max_pixels`` pixels (default ``PIL.Image.MAX_IMAGE_PIXELS``, about 89 Mpx) are refused as
decompression bombs (PIL itself also refuses to open files over twice its global limit).

Items: ``image`` float32 ``(channels, size, size)`` in ``[-1, 1]``; ``label`` int64 scalar with classes;
``caption`` str with a metadata file (``""`` for a listed file without one); ``embedding`` float32
``(D,)`` or ``(L, D)`` with embeddings; ``path`` str.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .._utils import check_choice
from .transforms import flip_decision, hflip, normalise_mode, pil_to_tensor, resize_center_crop

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff")
METADATA_FILE = "metadata.jsonl"
#: PIL's default decompression-bomb limit, used even when ``PIL.Image.MAX_IMAGE_PIXELS`` was set to None.
DEFAULT_MAX_PIXELS = 89_478_485
#: How many skipped paths one warning lists before "and N more".
WARN_LIST_LIMIT = 5


class UndecodableImages(ValueError):
    """More files failed to decode in the loader than :func:`max_undecodable` allows. One line also when
    raised in a DataLoader worker: torch re-raises it in the main process as ``type(e)(the worker's
    traceback as text)``, so the message is taken back out of that text."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def max_undecodable(n: int) -> int:
    """How many files of an ``n``-image folder may fail to decode in the loader before it stops: 1% or 10."""
    return max(10, n // 100)


@dataclass(frozen=True)
class FolderConfig:
    """Options of :class:`FolderDataset` (see the module docstring)."""

    root: str = ""
    size: int | None = 64
    channels: Literal[1, 3] = 3
    labels: Literal["auto", "folders", "none"] = "auto"
    flip_p: float = 0.0
    seed: int = 0
    verify: Literal["quick", "full"] = "quick"
    max_pixels: int | None = None
    cache: bool = False
    embeddings: str | None = None
    embedding_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.fspath(self.root))
        if not self.root:
            raise ValueError("folder: root (the image directory) is required")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"folder: size must be a positive int or None, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"folder: channels must be 1 or 3, got {self.channels!r}")
        check_choice("folder labels", self.labels, ("auto", "folders", "none"))
        check_choice("folder verify", self.verify, ("quick", "full"))
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"folder: seed must be a non-negative int, got {self.seed!r}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"folder: flip_p must be in [0, 1], got {self.flip_p!r}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"folder: max_pixels must be positive or None, got {self.max_pixels!r}")
        if self.embeddings is not None and self.embedding_key is not None:
            raise ValueError("folder: give embeddings (an .npz) or embedding_key (a metadata.jsonl key), not both")


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_files(root: str) -> list[str]:
    """Image files under ``root`` by extension, as sorted POSIX paths relative to ``root``."""
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(here, root)
        for f in files:
            if _is_image_name(f):
                found.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
    return sorted(found)


def image_files(root: str) -> list[str]:
    """The files a folder dataset reads (before checking them): those its metadata.jsonl lists that exist, else
    every image file."""
    meta = os.path.join(root, METADATA_FILE)
    if os.path.isfile(meta):
        return [n for n in sorted(read_metadata(meta)) if os.path.isfile(os.path.join(root, n))]
    return list_image_files(root)


def image_sizes(root: str, limit: int = 2000) -> tuple[Counter[tuple[int, int]], int]:
    """``(width, height)`` counts from the headers of the folder's files (:func:`image_files`; at most ``limit``
    of them, evenly spread) and how many files there are; unreadable files are left out (the dataset says why)."""
    files = image_files(root)
    picked = files if len(files) <= limit else [files[i * len(files) // limit] for i in range(limit)]
    sizes: Counter[tuple[int, int]] = Counter()
    for name in picked:
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(os.path.join(root, name)) as img:
                sizes[img.size] += 1
    return sizes, len(files)


def read_metadata(path: str) -> dict[str, dict[str, Any]]:
    """Rows of a ``metadata.jsonl`` keyed by normalised ``file_name``; ``ValueError`` naming the file and
    line for malformed JSON, a row that is not an object, a missing/non-string ``file_name``, a
    non-string caption or a repeated file."""
    rows: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            name = row.get("file_name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}: missing or non-string 'file_name'")
            for key in ("text", "caption"):
                if key in row and not isinstance(row[key], str):
                    raise ValueError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
            key = os.path.normpath(name).replace(os.sep, "/")
            if key.startswith("../") or os.path.isabs(name):
                raise ValueError(f"{where}: file_name {name!r} points outside the folder")
            if key in rows:
                raise ValueError(f"{where}: file_name {name!r} is listed twice")
            rows[key] = row
    return rows


def _end_missing(path: str, fmt: str | None) -> bool:
    """Whether a JPEG lacks its end-of-image marker, a GIF its trailer, or a BMP the bytes its header
    states: the cheap sign of a cut file (one read at the end). Data after the marker is legal, so a
    file flagged here is decoded in full to decide."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if fmt == "BMP":
            stated = int.from_bytes(f.read(6)[2:], "little")
            return stated > size
        if fmt in ("JPEG", "GIF") and size >= 2:
            f.seek(-2, os.SEEK_END)
            tail = f.read(2)
            return tail != b"\xff\xd9" if fmt == "JPEG" else not tail.endswith(b"\x3b")
    return False


def check_image_file(path: str, max_pixels: int, full: bool) -> str | None:
    """Why ``path`` is unusable (empty, not an image, too many pixels, corrupt), or None if it is fine."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides, below
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    return (f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} "
                            "(refused as a possible decompression bomb)")
                fmt = img.format
                img.verify()
            if full or _end_missing(path, fmt):
                with Image.open(path) as img:
                    img.load()
    except Image.DecompressionBombError as e:  # over twice PIL's global limit: PIL refuses to open it
        return f"refused as a possible decompression bomb ({e})"
    except Image.UnidentifiedImageError:
        return "not an image (unrecognised format)"
    except Exception as e:  # noqa: BLE001  PIL reports corruption as OSError, SyntaxError, struct.error, ...
        return f"corrupt or truncated ({type(e).__name__}: {e})"
    return None


def load_image(path: str, size: int | None, channels: Literal[1, 3]) -> torch.Tensor:
    """Decode one file to a float32 ``(channels, size, size)`` tensor in ``[-1, 1]`` (see module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked against max_pixels already
        with Image.open(path) as img:
            if size is not None and img.format == "JPEG":
                img.draft(img.mode, (size, size))  # decode at a reduced DCT scale, still >= size both ways
            img.seek(0)  # first frame of GIF / animated WebP / multi-page TIFF
            img = ImageOps.exif_transpose(img)
    img = normalise_mode(img, channels)
    if size is not None:
        img = resize_center_crop(img, size)
    return pil_to_tensor(img, channels)


class FolderDataset(Dataset):
    """Images from a directory, with optional class sub-folders and metadata.jsonl captions."""

    Config = FolderConfig

    def __init__(self, config: FolderConfig | str | os.PathLike | None = None, **overrides: Any) -> None:
        if isinstance(config, (str, os.PathLike)):
            config = FolderConfig(root=os.fspath(config), **overrides)
        elif config is None:
            config = FolderConfig(**overrides)
        elif overrides:
            config = replace(config, **overrides)
        self.config = cfg = config
        root = cfg.root
        if not os.path.isdir(root):
            what = "is not a directory" if os.path.exists(root) else "does not exist"
            raise FileNotFoundError(f"image folder {root!r} {what}")
        meta_path = os.path.join(root, METADATA_FILE)
        self.metadata: dict[str, dict[str, Any]] = {}
        self.skipped: list[tuple[str, str]] = []
        if os.path.isfile(meta_path):
            self.metadata = read_metadata(meta_path)
            candidates = sorted(self.metadata)
            for name in candidates:
                if not os.path.isfile(os.path.join(root, name)):
                    self.skipped.append((os.path.join(root, name), f"listed in {METADATA_FILE} but missing"))
            candidates = [n for n in candidates if os.path.isfile(os.path.join(root, n))]
        else:
            candidates = list_image_files(root)
        max_pixels = cfg.max_pixels or Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
        self.files: list[str] = []
        for name in candidates:
            reason = check_image_file(os.path.join(root, name), max_pixels, cfg.verify == "full")
            if reason is None:
                self.files.append(name)
            else:
                self.skipped.append((os.path.join(root, name), reason))
        if self.skipped:
            listed = "; ".join(f"{p} ({r})" for p, r in self.skipped[:WARN_LIST_LIMIT])
            more = len(self.skipped) - WARN_LIST_LIMIT
            warnings.warn(f"{root}: skipped {len(self.skipped)} unusable file(s): {listed}"
                          + (f"; and {more} more (see dataset.skipped)" if more > 0 else ""), stacklevel=2)
        if not self.files:
            raise ValueError(f"no usable images in {root!r} ({len(self.skipped)} skipped, "
                             f"extensions {', '.join(IMAGE_EXTENSIONS)})")
        self.classes, self.labels = self._infer_classes()
        has_text = any("text" in r or "caption" in r for r in self.metadata.values())
        self.captions: list[str] | None = None
        if has_text:
            self.captions = [self._caption(self.metadata[f]) for f in self.files]
        self.embeddings = self._read_embeddings(meta_path)
        self.epoch = 0
        self._cache: dict[int, torch.Tensor] = {}
        self.undecodable: dict[int, str] = {}  # index -> why it failed to decode, found while reading items

    @staticmethod
    def _caption(row: dict[str, Any]) -> str:
        return row.get("text", row.get("caption", ""))

    def _read_embeddings(self, meta_path: str) -> torch.Tensor | None:
        """``(N, D)`` or ``(N, L, D)`` float32 embeddings of :attr:`files`, from the ``.npz`` or the metadata key."""
        cfg = self.config
        if cfg.embeddings is not None:
            source = cfg.embeddings
            if not os.path.isfile(source):
                raise FileNotFoundError(f"folder embeddings {source!r} does not exist")
            try:
                archive = np.load(source, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"{source}: cannot read the embeddings ({e})") from None
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError(f"{source}: expected an .npz with one array per image, keyed by file name")
            with archive:
                found = set(archive.files)
                values = [archive[name] for name in self.files if name in found]
        elif cfg.embedding_key is not None:
            source = f"{meta_path} key {cfg.embedding_key!r}"
            if not self.metadata:
                raise ValueError(f"folder: embedding_key={cfg.embedding_key!r} needs a {METADATA_FILE} in {cfg.root!r}")
            found = {name for name in self.files if cfg.embedding_key in self.metadata[name]}
            values = [self.metadata[name][cfg.embedding_key] for name in self.files if name in found]
        else:
            return None
        missing = [name for name in self.files if name not in found]
        if missing:
            more = " ..." if len(missing) > WARN_LIST_LIMIT else ""
            raise ValueError(f"{source}: no embedding for {len(missing)} image(s): "
                             f"{', '.join(missing[:WARN_LIST_LIMIT])}{more}")
        arrays: list[np.ndarray] = []
        for name, value in zip(self.files, values):
            try:
                a = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: the embedding of {name!r} is not an array of numbers") from None
            if a.ndim not in (1, 2) or 0 in a.shape or not np.isfinite(a).all():
                raise ValueError(f"{source}: the embedding of {name!r} must be a finite (D,) vector or (L, D) "
                                 f"sequence, got shape {a.shape}")
            if arrays and a.shape != arrays[0].shape:
                raise ValueError(f"{source}: embeddings must all have one shape; {self.files[0]!r} has "
                                 f"{arrays[0].shape}, {name!r} has {a.shape}")
            arrays.append(a)
        return torch.from_numpy(np.stack(arrays))

    def _infer_classes(self) -> tuple[tuple[str, ...], list[int] | None]:
        mode, files = self.config.labels, self.files
        if mode == "none":
            return (), None
        top = [f.split("/", 1)[0] if "/" in f else None for f in files]
        if mode == "folders" and None in top:
            loose = [f for f, t in zip(files, top) if t is None][:WARN_LIST_LIMIT]
            raise ValueError(f"{self.config.root}: labels='folders' needs every image in a class sub-folder; "
                             f"found images directly in the folder: {', '.join(loose)}")
        classes = tuple(sorted(set(t for t in top if t is not None)))
        if mode == "auto" and (None in top or len(classes) < 2):
            return (), None
        index = {c: i for i, c in enumerate(classes)}
        return classes, [index[t] for t in top]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random flips items use (flips depend only on seed, epoch and index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def _decoded(self, index: int) -> tuple[int, torch.Tensor]:
        """``(index, image)``, or for a file that does not decode the next index whose file does (see the
        module docstring); every file that fails is warned about once and remembered in ``undecodable``."""
        cfg = self.config
        for _ in range(len(self)):
            if index not in self.undecodable:
                image = self._cache.get(index)
                if image is not None:
                    return index, image
                path = os.path.join(cfg.root, self.files[index])
                try:
                    image = load_image(path, cfg.size, cfg.channels)
                except Exception as e:  # noqa: BLE001  PIL reports corruption as OSError, SyntaxError, ...
                    self._undecodable(path, index, f"{type(e).__name__}: {e}")
                else:
                    if cfg.cache:
                        self._cache[index] = image
                    return index, image
            index = (index + 1) % len(self)
        raise AssertionError("unreachable: _undecodable stops before every file failed")

    def _undecodable(self, path: str, index: int, reason: str) -> None:
        self.undecodable[index] = reason
        limit = max_undecodable(len(self))
        if len(self.undecodable) > limit:
            raise UndecodableImages(f"{self.config.root}: {len(self.undecodable)} files failed to decode, more "
                                    f"than the {limit} allowed (1% or 10), last {path} ({reason}); find them all "
                                    "up front with data.verify: full")
        warnings.warn(f"cannot decode {path} ({reason}); reading the next image in its place "
                      f"({len(self.undecodable)} of at most {limit} such files; data.verify: full finds them up "
                      "front)", stacklevel=3)

    def __getitem__(self, index: int) -> dict[str, Any]:
        cfg = self.config
        if not -len(self) <= index < len(self):
            raise IndexError(f"folder index {index} out of range for {len(self)} images")
        index, image = self._decoded(index % len(self))
        path = os.path.join(cfg.root, self.files[index])
        if flip_decision(cfg.seed, self.epoch, index, cfg.flip_p):
            image = hflip(image)
        item: dict[str, Any] = {"image": image, "path": path}
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        if self.captions is not None:
            item["caption"] = self.captions[index]
        if self.embeddings is not None:
            item["embedding"] = self.embeddings[index]
        return item

    def __repr__(self) -> str:
        return (f"FolderDataset({len(self)} images in {self.config.root!r}, classes={len(self.classes)}, "
                f"captions={self.captions is not None})")
