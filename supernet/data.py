"""Training data for the supernet: four dataset specs behind one call, no torchvision, no downloads.

`load_data(spec, resolution, seed)` returns a `DataBundle` of named splits, map-style torch
datasets of `(image, label)`: `image` a float32 tensor `[3, resolution, resolution]`, normalised;
`label` a Python `int` (the default collate makes an int64 batch of them). Every spec has `train`
(augmented) and `val` (what searches select on); specs with an official test set also have `test`,
which no decision may read: it is for the report made once a search is over (`bundle.split(name)`).

Specs (`DATA_SPECS_HELP`):

- `digits`: the 1797 8x8 handwritten digits bundled inside scikit-learn. Fixed stratified 80/20
  split (per class, a constant seed, never `seed`), so every run validates on the same 359 images.
  Train-time augmentation: a random translation of at most one source pixel (zero fill), drawn
  from torch's RNG, then a bilinear upscale; val is not augmented. No flip: a mirrored digit is
  another glyph. Grey is replicated to three channels and normalised with the train split's mean
  and std.
- `synthetic[:N]`: N procedural train images (default 512), max(N // 4, 10) val images, 10
  classes; a class is an orientation and frequency of a sine grating plus a colour, each image
  adds a random phase, a small orientation jitter and Gaussian noise. Seeded by `seed` (train and
  val from different streams), rendered per item at any resolution, independent of access order.
- `imagefolder:PATH`: the ImageNet layout `PATH/{train,val}/<class>/<image>`, classes sorted by
  name. Train: random-resized crop (scale 0.08-1, ratio 3/4-4/3: the DeiT recipe the four
  families were trained with) and a horizontal flip. Val: shorter side to floor(resolution /
  0.875), centre crop. ImageNet mean/std.
- `cifar10:PATH`: the python pickle batches in PATH or PATH/cifar-10-batches-py. `val` is a fixed
  stratified 5000 of the 50000 training images (constant seed), `train` the other 45000 and `test`
  the official test batch. Train: 4-pixel zero pad + random 32x32 crop and a horizontal flip, then
  a bilinear upscale; val and test: upscale only. CIFAR-10 mean/std.
- `fashion-mnist[:PATH]`: Fashion-MNIST's IDX files (`train-images-idx3-ubyte[.gz]`,
  `train-labels-idx1-ubyte[.gz]`, `t10k-...`) in PATH, by default where Debian's
  `dataset-fashion-mnist` package puts them (`FASHION_MNIST_DEFAULT_PATH`). `val` is a fixed
  stratified 10000 of the 60000 training images (1000 per class, constant seed), `train` the other
  50000, `test` the official 10000. Train: 2-pixel zero pad + random 28x28 crop and a horizontal
  flip (clothes are left-right symmetric, digits are not), then a bilinear upscale; grey
  replicated to three channels, normalised with the train split's mean and std.

Every random decision of a train transform is drawn from torch's global RNG, which a
`DataLoader` seeds per worker from its `generator` (and which the main process uses when
`num_workers=0`), so a seeded loader makes epochs reproducible. Bad input (unknown spec, missing
path, malformed folder, corrupt batch) is a `DataError` whose message is one line naming the spec.

Sizes are bounded before anything is allocated: the resolution (`DATA_RESOLUTION`), N of
`synthetic:N` (`search_spaces.limits.IMAGES`), and every file read (a regular file within its cap:
`CIFAR10_MAX_BATCH_BYTES`, `IDX_MAX_BYTES`, `IMAGE_MAX_BYTES`; a FIFO or a device is refused, not
read). Messages never quote a file's content.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from search_spaces.files import FileError, check_input_file
from search_spaces.limits import IMAGES, RESOLUTION, SEED, IntRange

DATA_SPECS_HELP = ("digits | synthetic[:N] (N train images, default 512) | imagefolder:PATH | cifar10:PATH | "
                   "fashion-mnist[:PATH]")
SPLITS = ("train", "val", "test")
# Data at any size up to the largest network input; below 16 px only data tests render (networks need 16+).
DATA_RESOLUTION = IntRange(1, RESOLUTION.high, "px")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the 50000 CIFAR-10 train images. (The often-copied
# (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the dataset std.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Digits: a constant split seed, so the validation set is the same for every run and every `seed`.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2
DIGITS_SHIFT = 1  # source pixels: one pixel of an 8x8 digit is already a 12.5% translation

SYNTHETIC_DEFAULT_SIZE = 512
SYNTHETIC_CLASSES = 10
SYNTHETIC_MIN_VAL = 10  # at least one image per class on average, however small N is
SYNTHETIC_NOISE = 0.15  # pixel noise std; the class stays visible (colour alone separates it)
SYNTHETIC_SIZE = IntRange(SYNTHETIC_CLASSES, IMAGES.high)  # N of synthetic:N (its per-image draws are held in memory)

# ImageNet-style transforms: the DeiT / timm recipe the EfficientFormer, EdgeViT and EdgeNeXt
# papers train with (random-resized crop 0.08-1, eval crop ratio 0.875).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10  # tries before falling back to a centre crop, as torchvision does
EVAL_CROP_FRACTION = 0.875
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_MAX_BYTES = 256 << 20  # one image file of an image folder (ImageNet's largest is about 15 MB)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN_BATCHES, "test_batch", "batches.meta")
CIFAR10_PAD = 4  # source pixels of zero padding before the random 32x32 crop
CIFAR10_VAL_PER_CLASS = 500  # carved from the training batches: the test batch is kept for reports
CIFAR10_MAX_BATCH_BYTES = 256 << 20  # a published batch is 31 MB (10000 images of 3072 bytes)

FASHION_MNIST_DEFAULT_PATH = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_SIZES = {"train": 60_000, "test": 10_000}
FASHION_MNIST_VAL_PER_CLASS = 1000
FASHION_MNIST_PAD = 2  # source pixels: a 7% translation of a 28x28 image, as for CIFAR's 4 of 32
# Splits carved from a training set use a constant seed, never `seed`: every run and every seed
# selects on the same images.
SPLIT_SEED = 0
# IDX (LeCun's MNIST format): big-endian magic 0x0000TTDD (TT = 0x08 unsigned byte, DD dimensions),
# then DD big-endian int32 sizes, then the data. Images are 3-D (count, rows, cols), labels 1-D.
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
IDX_MAX_BYTES = 1 << 30  # a file declaring more is not a dataset this loader should hold in memory
IDX_MAX_SIDE = RESOLUTION.high  # rows and columns of one IDX image (Fashion-MNIST's are 28)


class DataError(ValueError):
    """A data spec that cannot be loaded; the message is one line naming the spec and the fault."""


def _checked_file(path: Path, max_bytes: int, spec: str | None = None) -> Path:
    """`path` if it is a regular file of at most `max_bytes`, else `DataError` (prefixed with the spec)."""
    try:
        return check_input_file(path, "", max_bytes)
    except FileError as error:
        raise DataError(f"data {spec}: {error}" if spec else str(error)) from None


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """The named splits of one spec at one resolution, and what they are.

    `train`, `val` and (where the data has one) `test` yield `(float32 [3, resolution, resolution],
    int label)`; labels lie in `range(num_classes)` and `classes[label]` names them. `train` is
    augmented, `val` is what a search selects on, `test` is read only for a final report.
    `describe()` is a JSON-ready dict (sizes, split rule, augmentation, normalisation, source) for
    logs and checkpoints.
    """

    name: str
    spec: str
    train: Dataset
    val: Dataset
    num_classes: int
    classes: tuple[str, ...]
    resolution: int
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    test: Dataset | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names this bundle has, in `SPLITS` order."""
        return tuple(name for name in SPLITS if getattr(self, name) is not None)

    def split(self, name: str) -> Dataset:
        """The dataset of split `name`; `DataError` naming the splits there are otherwise."""
        if name not in self.splits:
            raise DataError(f"data {self.spec}: no split {name!r}; it has {', '.join(self.splits)}")
        return getattr(self, name)

    def describe(self) -> dict[str, Any]:
        sizes = {f"{name}_size": len(getattr(self, name)) for name in self.splits}
        return {
            "name": self.name,
            "spec": self.spec,
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            **sizes,
            **copy.deepcopy(dict(self.details)),
        }


def load_data(spec: str, resolution: int, seed: int = 0) -> DataBundle:
    """The datasets of `spec` (see `DATA_SPECS_HELP`) at `resolution`; `seed` only drives `synthetic`."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data spec; accepted: {DATA_SPECS_HELP}")
    spec = spec.strip()
    if resolution not in DATA_RESOLUTION:
        raise DataError(f"data {spec}: resolution must be {DATA_RESOLUTION.describe()}, not {resolution!r}")
    if seed not in SEED:
        raise DataError(f"data {spec}: seed must be {SEED.describe()}, not {seed!r}")
    kind, _, argument = spec.partition(":")
    if kind == "digits" and not argument and ":" not in spec:
        return _load_digits(resolution)
    if kind == "fashion-mnist":
        if ":" in spec and not argument.strip():
            raise DataError(f"data spec {spec!r}: give a folder after the colon, or no colon for "
                            f"{FASHION_MNIST_DEFAULT_PATH}")
        root = Path(os.path.expanduser(argument.strip())) if argument.strip() else FASHION_MNIST_DEFAULT_PATH
        return _load_fashion_mnist(spec, root, resolution)
    if kind == "synthetic":
        return _load_synthetic(spec, argument if ":" in spec else None, resolution, seed)
    if kind in ("imagefolder", "cifar10"):
        if not argument.strip():
            raise DataError(f"data spec {spec!r} needs a path: {kind}:PATH")
        root = Path(os.path.expanduser(argument.strip()))
        if kind == "imagefolder":
            return _load_imagefolder(spec, root, resolution)
        return _load_cifar10(spec, root, resolution)
    raise DataError(f"unknown data spec {spec!r}; accepted: {DATA_SPECS_HELP}")


# --- shared tensor transforms --------------------------------------------------------------------


def _normalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_tensor = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (image - mean_tensor) / std_tensor


def _resize(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of `[C, H, W]` to a square; antialiased when shrinking."""
    if image.shape[-2:] == (resolution, resolution):
        return image
    shrinking = resolution < max(image.shape[-2:])
    return F.interpolate(
        image.unsqueeze(0), size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrinking
    ).squeeze(0)


def _random_shift(image: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad by `pad` and crop back to the original size at a random offset (torch RNG)."""
    if pad <= 0:
        return image
    height, width = image.shape[-2:]
    padded = F.pad(image, (pad, pad, pad, pad))
    top, left = (int(value) for value in torch.randint(0, 2 * pad + 1, (2,)))
    return padded[..., top : top + height, left : left + width]


class SmallImageDataset(Dataset):
    """Small source images held in memory, upscaled per item (caching at 224 would cost gigabytes).

    `images` is `[N, C, H, W]`, uint8 (0-255) or float (0-1), with C 1 (replicated to RGB) or 3.
    Train-time options: `shift` (random translation in source pixels) and `flip` (horizontal, p=0.5).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        resolution: int,
        mean: Sequence[float],
        std: Sequence[float],
        shift: int = 0,
        flip: bool = False,
    ):
        if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) != len(labels):
            raise ValueError(f"images must be [N, 1|3, H, W] with one label each, got {tuple(images.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.resolution = resolution
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self.shift = shift
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        image = image.to(torch.float32) / 255.0 if image.dtype == torch.uint8 else image.to(torch.float32)
        image = _random_shift(image, self.shift)
        if self.flip and float(torch.rand(())) < 0.5:
            image = image.flip(-1)
        # Normalising commutes with bilinear resizing, so do it at the (small) source size.
        image = _normalise(image, self.mean[: len(image)], self.std[: len(image)])
        image = _resize(image, self.resolution)
        return (image.repeat(3, 1, 1) if image.shape[0] == 1 else image), int(self.labels[index])


# --- digits --------------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, val_count: Callable[[int], int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/val indices (each sorted): per class, a `seed`-ed shuffle of its members, the first
    `val_count(class size)` to val, the rest to train."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = val_count(len(members))
        val.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_subset(dataset, size: int, seed: int = 0) -> Subset:
    """A fixed subset of `size` items of a labelled dataset (its `.labels`), equally many of each
    class (as far as they go), drawn with `seed`; the whole dataset when `size` is 0 or too large."""
    if not size or size >= len(dataset):
        return Subset(dataset, list(range(len(dataset))))
    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = size // len(classes)
    chosen = []
    for label in classes:
        members = rng.permutation(np.flatnonzero(labels == label))
        chosen.extend(members[:per_class].tolist())
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    chosen.extend(rng.permutation(rest)[: size - len(chosen)].tolist())
    return Subset(dataset, sorted(chosen))


def digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/val indices: per class, a constant-seeded shuffle, round(20%) to val; sorted."""
    return stratified_split(labels, lambda size: int(round(size * DIGITS_VAL_FRACTION)), DIGITS_SPLIT_SEED)


def _load_digits(resolution: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [1797, 1, 8, 8], 0..1
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_index, val_index = digits_split(digits.target)
    train_pixels = images[torch.from_numpy(train_index)]
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    mean3, std3 = (mean,) * 3, (std,) * 3
    train = SmallImageDataset(images[train_index], labels[train_index], resolution, mean3, std3, shift=DIGITS_SHIFT)
    val = SmallImageDataset(images[val_index], labels[val_index], resolution, mean3, std3)
    return DataBundle(
        name="digits",
        spec="digits",
        train=train,
        val=val,
        num_classes=10,
        classes=tuple(str(label) for label in range(10)),
        resolution=resolution,
        details={
            "source": "sklearn.datasets.load_digits (8x8 grey, bundled, 1797 images)",
            "split": (
                f"fixed stratified {1 - DIGITS_VAL_FRACTION:.0%}/{DIGITS_VAL_FRACTION:.0%}: per class a shuffle "
                f"seeded {DIGITS_SPLIT_SEED} (not by --seed), round({DIGITS_VAL_FRACTION:.0%}) to val"
            ),
            "train_augmentation": f"random translation of up to {DIGITS_SHIFT} source pixel (zero fill); no flip",
            "val_transform": "none",
            "resize": f"bilinear 8x8 -> {resolution}x{resolution}, grey replicated to 3 channels",
            "normalisation": {"mean": list(mean3), "std": list(std3), "of": "train split pixels in [0, 1]"},
        },
    )


# --- synthetic -----------------------------------------------------------------------------------

# Class c: grating orientation c * 18 degrees, 2, 3 or 4 cycles per image, its own colour. Colour
# alone makes the classes linearly separable; the grating gives convolutions something to find.
_SYNTHETIC_ORIENTATIONS = tuple(math.pi * c / SYNTHETIC_CLASSES for c in range(SYNTHETIC_CLASSES))
_SYNTHETIC_FREQUENCIES = tuple(2.0 + (c % 3) for c in range(SYNTHETIC_CLASSES))
_SYNTHETIC_COLOURS = (
    (0.90, 0.20, 0.20), (0.20, 0.80, 0.20), (0.20, 0.30, 0.90), (0.90, 0.85, 0.20), (0.80, 0.25, 0.85),
    (0.20, 0.85, 0.85), (0.95, 0.55, 0.15), (0.55, 0.35, 0.20), (0.60, 0.60, 0.60), (0.45, 0.15, 0.60),
)
# Measured over 4000 rendered images (any seed gives the same to two decimals): inputs near N(0, 1).
_SYNTHETIC_MEAN = (0.29, 0.25, 0.24)
_SYNTHETIC_STD = (0.27, 0.25, 0.26)


class SyntheticDataset(Dataset):
    """Seeded sine gratings; per-image parameters drawn at construction, pixels rendered per item.

    Item `i` depends only on (`seed`, `stream`, `i`): the same for any access order or worker.
    """

    def __init__(self, size: int, resolution: int, seed: int, stream: int):
        rng = np.random.default_rng([seed, stream])
        self.resolution = resolution
        self.labels = rng.permutation(np.arange(size) % SYNTHETIC_CLASSES).astype(np.int64)
        self.phases = rng.uniform(0.0, 2.0 * math.pi, size)
        self.jitters = rng.uniform(-math.pi / 40, math.pi / 40, size)  # a quarter of the class spacing
        self.contrasts = rng.uniform(0.6, 1.0, size)
        self.noise_seeds = rng.integers(0, 2**62, size)
        coordinates = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution - 0.5
        self._y, self._x = torch.meshgrid(coordinates, coordinates, indexing="ij")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.labels[index])
        angle = _SYNTHETIC_ORIENTATIONS[label] + float(self.jitters[index])
        along = self._x * math.cos(angle) + self._y * math.sin(angle)
        wave = torch.sin(2.0 * math.pi * _SYNTHETIC_FREQUENCIES[label] * along + float(self.phases[index]))
        pattern = (0.5 + 0.45 * float(self.contrasts[index]) * wave).to(torch.float32)
        colour = torch.tensor(_SYNTHETIC_COLOURS[label], dtype=torch.float32).view(3, 1, 1)
        generator = torch.Generator().manual_seed(int(self.noise_seeds[index]))
        noise = torch.randn(3, self.resolution, self.resolution, generator=generator) * SYNTHETIC_NOISE
        return _normalise(colour * pattern + noise, _SYNTHETIC_MEAN, _SYNTHETIC_STD), label


def _load_synthetic(spec: str, argument: str | None, resolution: int, seed: int) -> DataBundle:
    size = SYNTHETIC_DEFAULT_SIZE
    if argument is not None:
        text = argument.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 12 or int(text) not in SYNTHETIC_SIZE:
            raise DataError(f"data spec {spec[:60]!r}: N must be {SYNTHETIC_SIZE.describe()} (synthetic:N, N train "
                            "images)")
        size = int(text)
    val_size = max(size // 4, SYNTHETIC_MIN_VAL)
    return DataBundle(
        name="synthetic",
        spec=spec,
        train=SyntheticDataset(size, resolution, seed, stream=0),
        val=SyntheticDataset(val_size, resolution, seed, stream=1),
        num_classes=SYNTHETIC_CLASSES,
        classes=tuple(f"grating{c}" for c in range(SYNTHETIC_CLASSES)),
        resolution=resolution,
        details={
            "source": f"procedural sine gratings, seed {seed}",
            "split": (
                f"independent streams of seed {seed}: {size} train, {val_size} val (max(N // 4, {SYNTHETIC_MIN_VAL}))"
            ),
            "train_augmentation": "none (every image already has a random phase, jitter and noise)",
            "val_transform": "none",
            "resize": "rendered at the resolution",
            "normalisation": {
                "mean": list(_SYNTHETIC_MEAN),
                "std": list(_SYNTHETIC_STD),
                "of": "constants measured once over 4000 images",
            },
        },
    )


# --- imagefolder ---------------------------------------------------------------------------------


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((entry for entry in entries if not entry.name.startswith(".")), key=lambda entry: entry.name)


def _scan_split(spec: str, root: Path, split: str) -> tuple[list[str], dict[str, list[str]]]:
    """Class names (sorted) and each class's image paths (sorted) under `root/split`."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"data {spec}: missing folder {folder} (expected PATH/train/<class>/<image> and PATH/val/<class>/<image>)"
        )
    classes = [entry.name for entry in _visible_entries(folder) if entry.is_dir()]
    if not classes:
        raise DataError(f"data {spec}: {folder} has no class folders (expected {folder}/<class>/<image>)")
    images: dict[str, list[str]] = {}
    for name in classes:
        files = [
            entry.path
            for entry in _visible_entries(folder / name)
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not files:
            raise DataError(f"data {spec}: class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        images[name] = files
    return classes, images


def _first_line(error: BaseException) -> str:
    """`Type: first line of the message`, so a multi-line library error stays one line."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _few(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown or "none"


def _random_resized_box(width: int, height: int) -> tuple[float, float, float, float]:
    """A (left, top, right, bottom) box of random area and aspect ratio (torchvision's algorithm, torch RNG)."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * float(torch.empty(()).uniform_(*CROP_SCALE))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, ()))
            left = int(torch.randint(0, width - crop_width + 1, ()))
            return left, top, left + crop_width, top + crop_height
    ratio = width / height  # fall back to the largest centre crop within the ratio range
    if ratio < CROP_RATIO[0]:
        crop_width, crop_height = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        crop_width, crop_height = int(round(height * CROP_RATIO[1])), height
    else:
        crop_width, crop_height = width, height
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return left, top, left + crop_width, top + crop_height


def _centre_box(width: int, height: int, resolution: int) -> tuple[float, float, float, float]:
    """The box of the original image that 'shorter side to resolution / 0.875, centre crop' keeps."""
    scale = math.floor(resolution / EVAL_CROP_FRACTION) / min(width, height)
    side = resolution / scale  # the crop's side in original pixels
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return left, top, left + side, top + side


class ImageFolderDataset(Dataset):
    """Images on disk in the ImageNet layout, read with Pillow per item.

    Train: random-resized crop then horizontal flip; val: resize and centre crop. Both crops are
    one Pillow resize over a source box (antialiased bilinear), so no intermediate image is made.
    """

    def __init__(self, spec: str, samples: list[tuple[str, int]], resolution: int, train: bool):
        self.spec = spec
        self.samples = samples
        self.resolution = resolution
        self.train = train

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        _checked_file(Path(path), IMAGE_MAX_BYTES, self.spec)  # a file replaced by a FIFO would block the run
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"data {self.spec}: cannot read image {path}: {_first_line(error)}") from None
        width, height = image.size
        box = _random_resized_box(width, height) if self.train else _centre_box(width, height, self.resolution)
        image = image.resize((self.resolution, self.resolution), Image.BILINEAR, box=box)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).to(torch.float32) / 255.0
        if self.train and float(torch.rand(())) < 0.5:
            tensor = tensor.flip(-1)
        return _normalise(tensor, IMAGENET_MEAN, IMAGENET_STD), label


def _check_folder(spec: str, root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"data {spec}: {root} is not a directory" if root.exists() else
                        f"data {spec}: no such directory {root}")


def _load_imagefolder(spec: str, root: Path, resolution: int) -> DataBundle:
    _check_folder(spec, root)
    try:
        train_classes, train_images = _scan_split(spec, root, "train")
        val_classes, val_images = _scan_split(spec, root, "val")
    except OSError as error:  # an unreadable folder
        raise DataError(f"data {spec}: {_first_line(error)}") from None
    if train_classes != val_classes:
        only_train = [name for name in train_classes if name not in set(val_classes)]
        only_val = [name for name in val_classes if name not in set(train_classes)]
        raise DataError(
            f"data {spec}: val classes differ from train classes "
            f"(only in train: {_few(only_train)}; only in val: {_few(only_val)})"
        )
    index = {name: label for label, name in enumerate(train_classes)}

    def samples(images: dict[str, list[str]]) -> list[tuple[str, int]]:
        return [(path, index[name]) for name in train_classes for path in images[name]]

    train = ImageFolderDataset(spec, samples(train_images), resolution, train=True)
    val = ImageFolderDataset(spec, samples(val_images), resolution, train=False)
    return DataBundle(
        name="imagefolder",
        spec=spec,
        train=train,
        val=val,
        num_classes=len(train_classes),
        classes=tuple(train_classes),
        resolution=resolution,
        details={
            "source": str(root.resolve()),
            "split": "the folder's own train/ and val/",
            "train_augmentation": (
                f"random-resized crop (scale {CROP_SCALE[0]}-{CROP_SCALE[1]}, ratio 3/4-4/3, bilinear) "
                "+ horizontal flip p=0.5"
            ),
            "val_transform": f"shorter side to floor({resolution} / {EVAL_CROP_FRACTION}), centre crop {resolution}",
            "resize": "Pillow bilinear (antialiased)",
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "of": "ImageNet"},
        },
    )


# --- cifar10 -------------------------------------------------------------------------------------


class _ForeignObject(pickle.UnpicklingError):
    """A pickle naming a global a CIFAR batch never holds."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, numpy arrays): a pickle can
    otherwise run arbitrary code, and a data path is user input."""

    _ALLOWED = {
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2 (harmless: str -> bytes)
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise _ForeignObject()  # its name is file content: not echoed
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy 2 renamed numpy.core
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _read_batch(spec: str, path: Path) -> dict:
    if not os.path.lexists(path):
        raise DataError(f"data {spec}: missing {path}")
    _checked_file(path, CIFAR10_MAX_BATCH_BYTES, spec)
    try:
        with open(path, "rb") as stream:
            batch = _BatchUnpickler(stream, encoding="bytes").load()
    except _ForeignObject:
        raise DataError(f"data {spec}: {path} is truncated or corrupt (it names an object no CIFAR-10 batch holds; "
                        "refused without running it)") from None
    except Exception as error:  # truncated, not a pickle, deeply nested: all "corrupt" (the message may quote bytes)
        raise DataError(f"data {spec}: {path} is truncated or corrupt ({type(error).__name__})") from None
    if not isinstance(batch, dict):
        raise DataError(f"data {spec}: {path} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    return batch


def _batch_arrays(spec: str, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_batch(spec, path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32
            or not isinstance(labels, (list, np.ndarray))):
        raise DataError(f"data {spec}: {path} is not a CIFAR-10 batch (needs b'data' uint8 [N, 3072] and b'labels')")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError):
        raise DataError(f"data {spec}: {path} has b'labels' that are not a list of integers") from None
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"data {spec}: {path} has {labels.size} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"data {spec}: {path} has labels outside 0..{num_classes - 1}")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar10_folder(spec: str, root: Path) -> Path:
    _check_folder(spec, root)
    for folder in (root, root / CIFAR10_FOLDER):
        if os.path.lexists(folder / "batches.meta") or os.path.lexists(folder / "data_batch_1"):
            return folder
    raise DataError(
        f"data {spec}: no CIFAR-10 python batches ({', '.join(CIFAR10_FILES)}) in {root} or {root / CIFAR10_FOLDER}"
    )


def _load_cifar10(spec: str, root: Path, resolution: int) -> DataBundle:
    folder = _cifar10_folder(spec, root)
    missing = [name for name in CIFAR10_FILES if not os.path.lexists(folder / name)]
    if missing:
        raise DataError(f"data {spec}: missing {', '.join(missing)} in {folder}")
    names = _read_batch(spec, folder / "batches.meta").get(b"label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"data {spec}: {folder / 'batches.meta'} has no list of 10 b'label_names'")
    classes = tuple(name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name) for name in names)
    parts = [_batch_arrays(spec, folder / name, len(classes)) for name in CIFAR10_TRAIN_BATCHES]
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])
    test_images, test_labels = _batch_arrays(spec, folder / "test_batch", len(classes))
    # 500 of each class's 5000 (a tiny folder, as in tests, still gets one per class of two or more)
    train_index, val_index = stratified_split(
        train_labels, lambda size: min(CIFAR10_VAL_PER_CLASS, max(1, size // 10)) if size > 1 else 0, SPLIT_SEED
    )
    images, labels = torch.from_numpy(train_images), torch.from_numpy(train_labels)
    train = SmallImageDataset(images[train_index], labels[train_index], resolution, CIFAR10_MEAN, CIFAR10_STD,
                              shift=CIFAR10_PAD, flip=True)
    val = SmallImageDataset(images[val_index], labels[val_index], resolution, CIFAR10_MEAN, CIFAR10_STD)
    test = SmallImageDataset(
        torch.from_numpy(test_images), torch.from_numpy(test_labels), resolution, CIFAR10_MEAN, CIFAR10_STD
    )
    return DataBundle(
        name="cifar10",
        spec=spec,
        train=train,
        val=val,
        num_classes=len(classes),
        classes=classes,
        resolution=resolution,
        test=test,
        details={
            "source": str(folder.resolve()),
            "split": (f"data_batch_1..5: a fixed stratified {CIFAR10_VAL_PER_CLASS} per class (seed {SPLIT_SEED}) "
                      "to val, the rest train; test_batch test"),
            "train_augmentation": f"{CIFAR10_PAD}-pixel zero pad + random 32x32 crop, horizontal flip p=0.5",
            "val_transform": "none (val and test)",
            "resize": f"bilinear 32x32 -> {resolution}x{resolution}",
            "normalisation": {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD), "of": "CIFAR-10 train"},
        },
    )


# --- fashion-mnist -------------------------------------------------------------------------------


def read_idx(path: Path, magic: int, what: str) -> np.ndarray:
    """The uint8 array of an IDX file (raw, or gzip when the name ends in `.gz`).

    Checks the magic number (`IDX_IMAGES_MAGIC`: 3-D images, `IDX_LABELS_MAGIC`: 1-D labels), that
    the declared sizes fit `IDX_MAX_BYTES`, and that the file holds exactly the declared bytes;
    anything else is a `DataError` naming the file.
    """
    import gzip
    import struct

    dimensions = magic & 0xFF
    header_size = 4 + 4 * dimensions
    _checked_file(path, IDX_MAX_BYTES + header_size)  # compressed or not, never larger than what it declares
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as stream:
            header = stream.read(header_size)
            if len(header) < 4 or struct.unpack(">I", header[:4])[0] != magic:
                found = struct.unpack(">I", header[:4])[0] if len(header) >= 4 else None
                raise DataError(f"{path} is not an IDX {what} file (magic {found}, expected {magic})")
            if len(header) < header_size:
                raise DataError(f"{path} is truncated (its header ends after {len(header)} bytes)")
            shape = struct.unpack(f">{dimensions}I", header[4:])
            size = math.prod(shape)
            if dimensions == 3 and max(shape[1:]) > IDX_MAX_SIDE:
                raise DataError(f"{path} declares {shape[1]}x{shape[2]} images; at most {IDX_MAX_SIDE} a side accepted")
            if size > IDX_MAX_BYTES:
                raise DataError(f"{path} declares {size} bytes of {what}, more than the {IDX_MAX_BYTES} accepted")
            data = stream.read(size + 1)
    except DataError:
        raise
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read it ({_first_line(error)})") from None
    if len(data) != size:
        state = "truncated" if len(data) < size else "longer than its header says"
        raise DataError(f"{path} is {state} (header declares {size} bytes of {what} {list(shape)}, "
                        f"{'found ' + str(len(data)) if len(data) < size else 'found more'})")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _fashion_mnist_file(spec: str, root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if os.path.lexists(root / name):
            return root / name
    raise DataError(f"data {spec}: no {stem}[.gz] in {root}; Fashion-MNIST's IDX files are installed there by "
                    f"`{FASHION_MNIST_INSTALL}` (or give fashion-mnist:PATH)")


def _fashion_mnist_split(spec: str, root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _fashion_mnist_file(spec, root, FASHION_MNIST_FILES[f"{part}_images"])
    labels_path = _fashion_mnist_file(spec, root, FASHION_MNIST_FILES[f"{part}_labels"])
    images = read_idx(images_path, IDX_IMAGES_MAGIC, "images")
    labels = read_idx(labels_path, IDX_LABELS_MAGIC, "labels")
    if len(images) != len(labels):
        raise DataError(f"data {spec}: {images_path.name} has {len(images)} images but {labels_path.name} "
                        f"{len(labels)} labels")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"data {spec}: {labels_path} has labels outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images, labels.astype(np.int64)


def _load_fashion_mnist(spec: str, root: Path, resolution: int) -> DataBundle:
    if root.exists() and not root.is_dir():
        raise DataError(f"data {spec}: {root} is not a directory")
    if not root.is_dir():
        raise DataError(f"data {spec}: no folder {root}; Fashion-MNIST's IDX files are installed there by "
                        f"`{FASHION_MNIST_INSTALL}` (or give fashion-mnist:PATH)")
    train_images, train_labels = _fashion_mnist_split(spec, root, "train")
    test_images, test_labels = _fashion_mnist_split(spec, root, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"data {spec}: train images are {list(train_images.shape[1:])} but test images "
                        f"{list(test_images.shape[1:])}")
    per_class = min(np.bincount(train_labels, minlength=len(FASHION_MNIST_CLASSES)))
    val_per_class = min(FASHION_MNIST_VAL_PER_CLASS, per_class // 6)  # tiny files (tests) keep most for train
    train_index, val_index = stratified_split(train_labels, lambda size: val_per_class, SPLIT_SEED)
    images = torch.from_numpy(train_images.copy()).unsqueeze(1)  # [N, 1, 28, 28] uint8
    labels = torch.from_numpy(train_labels)
    train_pixels = images[torch.from_numpy(train_index)].to(torch.float32) / 255.0
    mean3, std3 = (float(train_pixels.mean()),) * 3, (float(train_pixels.std()),) * 3
    train = SmallImageDataset(images[train_index], labels[train_index], resolution, mean3, std3,
                              shift=FASHION_MNIST_PAD, flip=True)
    val = SmallImageDataset(images[val_index], labels[val_index], resolution, mean3, std3)
    test = SmallImageDataset(torch.from_numpy(test_images.copy()).unsqueeze(1), torch.from_numpy(test_labels),
                             resolution, mean3, std3)
    rows, cols = train_images.shape[1:]
    official = all(len(part) == FASHION_MNIST_SIZES[name] for name, part in (("train", train_labels), ("test", test_labels)))
    return DataBundle(
        name="fashion-mnist",
        spec=spec,
        train=train,
        val=val,
        test=test,
        num_classes=len(FASHION_MNIST_CLASSES),
        classes=FASHION_MNIST_CLASSES,
        resolution=resolution,
        details={
            "source": str(root.resolve()) + ("" if official else " (not the official 60000/10000 sizes)"),
            "split": (f"train-*: a fixed stratified {val_per_class} per class (seed {SPLIT_SEED}, not by --seed) to "
                      f"val, the rest train; t10k-* test"),
            "train_augmentation": f"{FASHION_MNIST_PAD}-pixel zero pad + random {rows}x{cols} crop, horizontal flip p=0.5",
            "val_transform": "none (val and test)",
            "resize": f"bilinear {rows}x{cols} -> {resolution}x{resolution}, grey replicated to 3 channels",
            "normalisation": {"mean": list(mean3), "std": list(std3), "of": "train split pixels in [0, 1]"},
        },
    )
