"""Data specs: shapes and labels, the fixed digits split, seeded synthetic data, the Pillow transforms
of imagefolder, CIFAR-10 batches, and a one-line `DataError` for every bad spec or folder."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from supernet.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATA_SPECS_HELP,
    DIGITS_VAL_FRACTION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    DataError,
    digits_split,
    load_data,
)


def assert_items(dataset, resolution: int, num_classes: int, count: int = 3) -> None:
    for index in range(min(count, len(dataset))):
        image, label = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, resolution, resolution)
        assert torch.isfinite(image).all()
        assert isinstance(label, int) and 0 <= label < num_classes


def assert_one_line_error(spec: str, match: str, resolution: int = 16) -> DataError:
    with pytest.raises(DataError, match=match) as caught:
        load_data(spec, resolution)
    assert "\n" not in str(caught.value)
    return caught.value


# --- digits --------------------------------------------------------------------------------------


def test_digits_bundle_shapes_and_description():
    bundle = load_data("digits", 16)
    assert isinstance(bundle, DataBundle) and bundle.name == "digits" and bundle.num_classes == 10
    assert len(bundle.train) + len(bundle.val) == 1797
    assert_items(bundle.train, 16, 10)
    assert_items(bundle.val, 16, 10)
    description = bundle.describe()
    json.dumps(description)  # logs and checkpoints store it
    assert description["train_size"] == len(bundle.train) and description["val_size"] == len(bundle.val)
    assert {"split", "train_augmentation", "normalisation", "source"} <= set(description)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundle.num_classes = 3


def test_digits_split_is_fixed_stratified_and_ignores_the_seed():
    from sklearn.datasets import load_digits

    targets = load_digits().target
    train_index, val_index = digits_split(targets)
    assert len(np.intersect1d(train_index, val_index)) == 0
    assert len(train_index) + len(val_index) == len(targets)
    for label in range(10):
        members = int((targets == label).sum())
        assert int((targets[val_index] == label).sum()) == round(members * DIGITS_VAL_FRACTION)
    again_train, again_val = digits_split(targets)
    assert np.array_equal(train_index, again_train) and np.array_equal(val_index, again_val)

    first, other_seed = load_data("digits", 8, seed=0), load_data("digits", 8, seed=7)
    assert torch.equal(first.val.labels, torch.from_numpy(targets[val_index]))
    for index in (0, 100, len(first.val) - 1):
        image, label = first.val[index]
        same_image, same_label = other_seed.val[index]
        assert torch.equal(image, same_image) and label == same_label


def test_digits_augmentation_follows_the_torch_rng_and_spares_val():
    bundle = load_data("digits", 16)
    torch.manual_seed(3)
    first = torch.stack([bundle.train[index][0] for index in range(32)])
    torch.manual_seed(3)
    again = torch.stack([bundle.train[index][0] for index in range(32)])
    assert torch.equal(first, again)
    torch.manual_seed(4)
    other = torch.stack([bundle.train[index][0] for index in range(32)])
    assert not torch.equal(first, other)  # some of 32 one-pixel shifts differ
    torch.manual_seed(5)
    val_first = bundle.val[0][0]
    torch.manual_seed(6)
    assert torch.equal(val_first, bundle.val[0][0])


def test_a_seeded_loader_with_workers_repeats_its_epoch():
    bundle = load_data("digits", 8)

    def epoch(seed: int) -> torch.Tensor:
        loader = DataLoader(
            bundle.train, batch_size=64, shuffle=True, num_workers=1, generator=torch.Generator().manual_seed(seed)
        )
        images, labels = next(iter(loader))
        assert images.shape == (64, 3, 8, 8) and labels.dtype == torch.int64
        return images

    assert torch.equal(epoch(11), epoch(11))
    assert not torch.equal(epoch(11), epoch(12))


# --- synthetic -----------------------------------------------------------------------------------


def test_synthetic_sizes_shapes_and_seeding():
    bundle = load_data("synthetic:40", 20, seed=1)
    assert bundle.num_classes == 10 and len(bundle.train) == 40 and len(bundle.val) == 10
    assert_items(bundle.train, 20, 10)
    assert_items(bundle.val, 20, 10)
    default = load_data("synthetic", 8)
    assert len(default.train) == 512 and len(default.val) == 128

    def stacked(dataset, order) -> torch.Tensor:
        return torch.stack([dataset[index][0] for index in order])

    order = range(len(bundle.train))
    same = load_data("synthetic:40", 20, seed=1)
    assert torch.equal(stacked(bundle.train, order), stacked(same.train, order))
    assert torch.equal(stacked(bundle.train, reversed(order)), stacked(same.train, reversed(order)))
    other = load_data("synthetic:40", 20, seed=2)
    assert not torch.equal(stacked(bundle.train, order), stacked(other.train, order))
    assert not torch.equal(stacked(bundle.train, range(10)), stacked(bundle.val, range(10)))
    assert sorted(bundle.train[index][1] for index in order) == sorted(list(range(10)) * 4)  # balanced


def test_synthetic_is_learnable_by_a_linear_classifier():
    from sklearn.linear_model import LogisticRegression

    bundle = load_data("synthetic:200", 12, seed=0)

    def arrays(dataset):
        items = [dataset[index] for index in range(len(dataset))]
        return torch.stack([image for image, _ in items]).flatten(1).numpy(), np.array([label for _, label in items])

    train_x, train_y = arrays(bundle.train)
    val_x, val_y = arrays(bundle.val)
    classifier = LogisticRegression(max_iter=300).fit(train_x, train_y)
    assert classifier.score(val_x, val_y) > 0.5  # chance is 0.1


# --- imagefolder ---------------------------------------------------------------------------------

COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
SIZES = ((20, 14), (14, 20), (17, 17))


def make_image(path, size, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_imagefolder(root, classes=COLOURS, val_classes=None):
    """PATH/{train,val}/<class>/*.png: solid colours of several sizes, plus one grey-scale gradient."""
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for name in names:
            for number, size in enumerate(SIZES if split == "train" else SIZES[:2]):
                make_image(root / split / name / f"{number}.png", size, COLOURS.get(name, (9, 9, 9)))
    gradient = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (12, 1))
    Image.fromarray(gradient, mode="L").save(root / "train" / sorted(classes)[0] / "grey.png")
    return root


def test_imagefolder_classes_shapes_and_normalisation(tmp_path):
    root = make_imagefolder(tmp_path / "data")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".cache").mkdir()
    bundle = load_data(f"imagefolder:{root}", 24)
    assert bundle.classes == ("cat", "dog", "emu") and bundle.num_classes == 3
    assert len(bundle.train) == 3 * 3 + 1 and len(bundle.val) == 3 * 2
    assert_items(bundle.train, 24, 3, count=len(bundle.train))
    assert_items(bundle.val, 24, 3, count=len(bundle.val))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for dataset in (bundle.train, bundle.val):
        for image, label in (dataset[index] for index in range(len(dataset))):
            if image.std(dim=(1, 2)).max() > 1e-5:  # the grey gradient
                continue
            colour = torch.tensor(COLOURS[bundle.classes[label]], dtype=torch.float32).view(3, 1, 1) / 255
            assert torch.allclose(image, ((colour - mean) / std).expand_as(image), atol=1e-5)
    assert bundle.describe()["source"] == str(root.resolve())


def test_imagefolder_train_crops_and_flips_from_the_torch_rng(tmp_path):
    root = make_imagefolder(tmp_path / "data", classes={"cat": None})
    left_dark = np.zeros((32, 48, 3), dtype=np.uint8)
    left_dark[:, 24:] = 255
    Image.fromarray(left_dark).save(root / "train" / "cat" / "0.png")
    Image.fromarray(left_dark).save(root / "val" / "cat" / "0.png")
    bundle = load_data(f"imagefolder:{root}", 16)
    val_image = bundle.val[0][0]
    assert val_image[:, :, 0].mean() < val_image[:, :, -1].mean()  # the centre crop keeps the layout
    torch.manual_seed(0)
    draws = [bundle.train[0][0] for _ in range(24)]
    torch.manual_seed(0)
    assert all(torch.equal(image, bundle.train[0][0]) for image in draws)
    flipped = [bool(image[:, :, 0].mean() > image[:, :, -1].mean()) for image in draws]
    assert any(flipped) and not all(flipped)
    assert len({image.sum().item() for image in draws}) > 1  # crops vary


def test_imagefolder_unreadable_image_is_one_line_error(tmp_path):
    root = make_imagefolder(tmp_path / "data")
    (root / "val" / "cat" / "0.png").write_bytes(b"not a png")
    bundle = load_data(f"imagefolder:{root}", 16)
    with pytest.raises(DataError, match="cannot read image .*0.png") as caught:
        bundle.val[0]
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("no_root", "no such directory"),
        ("no_train", "missing folder .*train"),
        ("no_val", "missing folder .*val"),
        ("no_classes", "has no class folders"),
        ("empty_class", "class folder .*dog has no images"),
        ("other_val_classes", "val classes differ from train classes .*only in train: emu; only in val: fox"),
    ],
)
def test_malformed_imagefolder_is_one_line_error(tmp_path, damage, match):
    import shutil

    root = tmp_path / "data"
    if damage == "other_val_classes":
        make_imagefolder(root, val_classes={"cat": None, "dog": None, "fox": None})
    elif damage != "no_root":
        make_imagefolder(root)
    if damage == "no_train":
        shutil.rmtree(root / "train")
    elif damage == "no_val":
        shutil.rmtree(root / "val")
    elif damage == "no_classes":
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
        (root / "train" / "loose.png").write_bytes(b"")
    elif damage == "empty_class":
        shutil.rmtree(root / "train" / "dog")
        (root / "train" / "dog").mkdir()
        (root / "train" / "dog" / "readme.txt").write_text("no images here")
    error = assert_one_line_error(f"imagefolder:{root}", match)
    assert f"imagefolder:{root}" in str(error)


# --- cifar10 -------------------------------------------------------------------------------------

CIFAR_NAMES = [name.encode() for name in "plane car bird cat deer dog frog horse ship truck".split()]


def write_batch(path, payload, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(payload, protocol=protocol))


def make_cifar10(folder, images_per_batch: int = 4):
    """Fake python batches (uint8 [N, 3072] + labels), as the cifar-10-batches-py folder holds them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index, name in enumerate([f"data_batch_{number}" for number in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, images_per_batch)]
        payload = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        write_batch(folder / name, payload, protocol=2 + index % 4)  # protocols 2-5 all load
    write_batch(folder / "batches.meta", {b"label_names": CIFAR_NAMES, b"num_vis": 3072})
    return folder


def test_cifar10_from_the_batch_folder_or_its_parent(tmp_path):
    folder = make_cifar10(tmp_path / "cifar-10-batches-py")
    for path in (folder, tmp_path):
        bundle = load_data(f"cifar10:{path}", 40)
        assert bundle.num_classes == 10 and bundle.classes[0] == "plane"
        assert len(bundle.train) + len(bundle.val) == 5 * 4 and len(bundle.test) == 4
        assert 0 < len(bundle.val) < len(bundle.train) and bundle.splits == ("train", "val", "test")
        assert_items(bundle.train, 40, 10)
        assert_items(bundle.val, 40, 10)
        assert_items(bundle.test, 40, 10)
    native = load_data(f"cifar10:{folder}", 32)
    test_batch = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    source = torch.from_numpy(test_batch[b"data"][1].reshape(3, 32, 32)).float() / 255
    expected = (source - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    image, label = native.test[1]  # the test batch is the test split; val is carved from the training batches
    assert torch.allclose(image, expected, atol=1e-6) and label == test_batch[b"labels"][1]
    torch.manual_seed(0)
    augmented = [native.train[0][0] for _ in range(8)]
    assert len({image.sum().item() for image in augmented}) > 1  # pad-crop and flip vary


def test_cifar10_batches_pickled_by_numpy_1_load(tmp_path):
    """The published batches name `numpy.core.multiarray`, which numpy 2 calls `numpy._core`."""
    folder = make_cifar10(tmp_path / "cifar-10-batches-py")
    for name in ("data_batch_1", "test_batch"):
        payload = (folder / name).read_bytes()
        write_batch(folder / name, pickle.loads(payload, encoding="bytes"), protocol=2)
        (folder / name).write_bytes((folder / name).read_bytes().replace(b"numpy._core.", b"numpy.core."))
    assert b"numpy.core.multiarray" in (folder / "test_batch").read_bytes()
    assert len(load_data(f"cifar10:{folder}", 32).test) == 4


@pytest.mark.parametrize(
    "damage, match",
    [
        ("no_batches", "no CIFAR-10 python batches"),
        ("missing_file", "missing data_batch_3"),
        ("truncated", "data_batch_2 is truncated or corrupt"),
        ("not_a_pickle", "test_batch is truncated or corrupt"),
        ("foreign_object", "data_batch_1 is truncated or corrupt .*refused without running it"),
        ("wrong_shape", "data_batch_4 is not a CIFAR-10 batch"),
        ("bad_labels", "data_batch_5 has labels outside 0..9"),
        ("no_label_names", "batches.meta has no list of 10"),
    ],
)
def test_bad_cifar10_folder_is_one_line_error(tmp_path, damage, match):
    folder = make_cifar10(tmp_path / "cifar-10-batches-py")
    if damage == "no_batches":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif damage == "missing_file":
        (folder / "data_batch_3").unlink()
    elif damage == "truncated":
        payload = (folder / "data_batch_2").read_bytes()
        (folder / "data_batch_2").write_bytes(payload[: len(payload) // 2])
    elif damage == "not_a_pickle":
        (folder / "test_batch").write_text("hello\n")
    elif damage == "foreign_object":
        write_batch(folder / "data_batch_1", {b"data": dataclasses.field, b"labels": []})
    elif damage == "wrong_shape":
        write_batch(folder / "data_batch_4", {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]})
    elif damage == "bad_labels":
        write_batch(folder / "data_batch_5", {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10]})
    elif damage == "no_label_names":
        write_batch(folder / "batches.meta", {b"num_vis": 3072})
    assert_one_line_error(f"cifar10:{folder}", match)


# --- specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, match",
    [
        ("mnist", "unknown data spec 'mnist'; accepted: digits"),
        ("digits:extra", "unknown data spec"),
        ("", "empty data spec"),
        ("synthetic:abc", "N must be an integer in 10..10000000"),
        ("synthetic:3", "N must be an integer in 10..10000000"),
        ("imagefolder:", "needs a path"),
        ("cifar10:", "needs a path"),
        ("imagefolder:/no/such/latnas/data", "no such directory /no/such/latnas/data"),
        ("cifar10:/no/such/latnas/data", "no such directory /no/such/latnas/data"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, match):
    assert_one_line_error(spec, match)


def test_bad_resolution_or_seed_and_the_help_line():
    with pytest.raises(DataError, match="resolution must be an integer in 1..1024 px"):
        load_data("synthetic", 0)
    with pytest.raises(DataError, match="seed must be an integer in 0..4294967295"):
        load_data("synthetic", 8, seed=-1)
    assert issubclass(DataError, ValueError)
    assert "\n" not in DATA_SPECS_HELP
    assert all(form in DATA_SPECS_HELP for form in ("digits", "synthetic", "imagefolder:PATH", "cifar10:PATH"))


# --- fashion-mnist -------------------------------------------------------------------------------


def write_idx(path, array: np.ndarray, magic: int | None = None) -> None:
    """An IDX file of a uint8 array (gzip when the name ends in .gz), as LeCun's format defines it."""
    import gzip
    import struct

    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)


def make_fashion_mnist(folder, train_per_class: int = 12, test_per_class: int = 3, gz: bool = True):
    """Tiny Fashion-MNIST-shaped IDX files: 28x28 images whose mean brightness encodes the class."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for part, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = (rng.integers(0, 40, (len(labels), 28, 28)) + labels[:, None, None] * 20).astype(np.uint8)
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_fashion_mnist_splits_shapes_and_normalisation(tmp_path, gz):
    folder = make_fashion_mnist(tmp_path / "fm", gz=gz)
    bundle = load_data(f"fashion-mnist:{folder}", 32)
    assert bundle.splits == ("train", "val", "test") and bundle.num_classes == 10
    assert bundle.classes[0] == "T-shirt/top" and bundle.classes[9] == "Ankle boot"
    assert len(bundle.train) + len(bundle.val) == 120 and len(bundle.test) == 30
    assert len(bundle.val) == 20  # stratified: 2 of each class's 12 (a sixth, at most 1000)
    assert sorted(bundle.val.labels.tolist()) == sorted(list(range(10)) * 2)
    for split in bundle.splits:
        assert_items(bundle.split(split), 32, 10)
    description = bundle.describe()
    assert (description["train_size"], description["val_size"], description["test_size"]) == (100, 20, 30)
    json.dumps(description)
    pixels = torch.stack([bundle.val[index][0] for index in range(len(bundle.val))])
    assert abs(float(pixels.mean())) < 0.5  # normalised with the train split's statistics


def test_fashion_mnist_val_is_fixed_and_train_is_augmented(tmp_path):
    folder = make_fashion_mnist(tmp_path / "fm")
    first, again = load_data(f"fashion-mnist:{folder}", 28, seed=0), load_data(f"fashion-mnist:{folder}", 28, seed=5)
    assert torch.equal(first.val.images, again.val.images)  # the split ignores the seed
    assert not set(map(bytes, first.val.images.numpy())) & set(map(bytes, first.train.images.numpy()))
    assert torch.equal(first.test[0][0], first.test[0][0])  # test is not augmented
    torch.manual_seed(0)
    augmented = {first.train[0][0].sum().item() for _ in range(8)}
    assert len(augmented) > 1  # pad-crop and flip vary


def test_fashion_mnist_test_split_is_the_t10k_files(tmp_path):
    folder = make_fashion_mnist(tmp_path / "fm", gz=False)
    bundle = load_data(f"fashion-mnist:{folder}", 28)
    raw = np.frombuffer((folder / "t10k-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    assert torch.equal(bundle.test.images[:, 0], torch.from_numpy(raw.copy()))


def test_a_split_that_does_not_exist_is_one_line_error():
    bundle = load_data("digits", 8)
    assert bundle.splits == ("train", "val")
    with pytest.raises(DataError, match="no split 'test'; it has train, val"):
        bundle.split("test")
    with pytest.raises(DataError, match="no split 'tset'"):
        bundle.split("tset")


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _foreign(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


def _wrong_magic(path):
    write_idx(path, np.zeros((10, 28, 28), dtype=np.uint8), magic=2049)


def _header_only(path):
    path.write_bytes(path.read_bytes()[:10])


def _fewer_labels(path):
    write_idx(path, np.zeros(5, dtype=np.uint8))


def _bad_labels(path):
    write_idx(path, np.full(120, 11, dtype=np.uint8))


def _huge_declared(path):
    import struct

    path.write_bytes(struct.pack(">IIII", 2051, 1 << 20, 1 << 10, 1 << 10) + b"\x00" * 16)


@pytest.mark.parametrize(
    "name, damage, match",
    [
        ("train-images-idx3-ubyte", _truncate, "is truncated"),
        ("train-images-idx3-ubyte", _header_only, "is truncated"),
        ("train-images-idx3-ubyte", _foreign, "is not an IDX images file"),
        ("t10k-images-idx3-ubyte", _wrong_magic, r"is not an IDX images file \(magic 2049, expected 2051\)"),
        ("train-labels-idx1-ubyte", _fewer_labels, "has 120 images but train-labels-idx1-ubyte 5 labels"),
        ("train-labels-idx1-ubyte", _bad_labels, "labels outside 0..9"),
        ("train-images-idx3-ubyte", _huge_declared, "more than the"),
        ("t10k-labels-idx1-ubyte", lambda path: path.unlink(), r"no t10k-labels-idx1-ubyte\[.gz\] in .*apt-get install"),
    ],
)
def test_bad_fashion_mnist_files_are_one_line_errors(tmp_path, name, damage, match):
    folder = make_fashion_mnist(tmp_path / "fm", gz=False)
    damage(folder / name)
    assert_one_line_error(f"fashion-mnist:{folder}", match)


def test_truncated_gzip_is_one_line_error(tmp_path):
    folder = make_fashion_mnist(tmp_path / "fm")
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert_one_line_error(f"fashion-mnist:{folder}", "train-images-idx3-ubyte.gz")


def test_fashion_mnist_folder_without_the_files_says_where_it_looked_and_how_to_get_them(tmp_path):
    error = assert_one_line_error(f"fashion-mnist:{tmp_path}", "no train-images-idx3-ubyte")
    assert str(tmp_path) in str(error) and "dataset-fashion-mnist" in str(error)
    missing = tmp_path / "nowhere"
    error = assert_one_line_error(f"fashion-mnist:{missing}", "no folder")
    assert str(missing) in str(error) and "apt-get install dataset-fashion-mnist" in str(error)
    assert_one_line_error("fashion-mnist:", "give a folder after the colon")


def test_fashion_mnist_default_path_is_the_debian_package(monkeypatch, tmp_path):
    import supernet.data as data

    monkeypatch.setattr(data, "FASHION_MNIST_DEFAULT_PATH", make_fashion_mnist(tmp_path / "debian"))
    assert len(load_data("fashion-mnist", 16).test) == 30
    assert "fashion-mnist[:PATH]" in DATA_SPECS_HELP
