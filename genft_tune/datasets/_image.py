"""Image-classification datasets (Hugging Face ``datasets``) and transforms in plain
PIL + torch (no torchvision).

Sources: any ``datasets.load_dataset`` source with an image column and an integer
label column (a Hub dataset, ``"imagefolder"`` with ``data_dir``, ``"parquet"`` with
``data_files``...), a directory written by ``Dataset.save_to_disk``, or
``"filelist"``: an image list in the GenFT authors' VTAB-1K (``path label`` lines) or
FGVC (JSON) format.
"""

import io
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

# Normalisation constants: ImageNet (torchvision / timm default) and the [-1, 1] one
# of Google's ViT checkpoints (google/vit-base-patch16-224-in21k, timm "inception").
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

log = logging.getLogger(__name__)


class ImageClassificationTransform:
    """PIL image -> normalised ``(C, H, W)`` float tensor.

    Resize to ``resize_size`` x ``resize_size`` (aspect ratio not kept, as VTAB does),
    then crop ``image_size``: a random crop when ``random_crop`` (training), else the
    centre crop; then, with ``hflip``, a horizontal flip with probability 0.5; then
    ``(x / 255 - mean) / std`` per channel. Randomness comes from torch's RNG, so
    ``torch.manual_seed`` and DataLoader worker seeding make it reproducible.

    Args:
        image_size (int): output side.
        resize_size (Optional[int]): side before cropping, ``>= image_size``; None means
            ``image_size`` (plain resize, no crop). Default: None
        num_channels (int): 3 (RGB) or 1 (grayscale). Default: 3
        mean (Sequence[float]): per-channel mean. Default: ImageNet
        std (Sequence[float]): per-channel std. Default: ImageNet
        random_crop (bool): random instead of centre crop. Default: False
        hflip (bool): random horizontal flip. Default: False
        interpolation (str): nearest, bilinear, bicubic or lanczos. Default: "bicubic"

    Raises:
        ValueError: naming the field, for an invalid size, channel count,
            mean/std length or interpolation.
    """

    def __init__(
        self,
        image_size: int,
        *,
        resize_size: Optional[int] = None,
        num_channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        random_crop: bool = False,
        hflip: bool = False,
        interpolation: str = "bicubic",
    ):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        resize_size = image_size if resize_size is None else resize_size
        if isinstance(resize_size, bool) or not isinstance(resize_size, int) or resize_size < image_size:
            raise ValueError(f"resize_size must be an integer >= image_size ({image_size}), got {resize_size!r}")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels!r}")
        for field, values in (("mean", mean), ("std", std)):
            if len(values) != num_channels:
                raise ValueError(f"{field} must have num_channels={num_channels} entries, got {list(values)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std entries must be > 0, got {list(std)}")
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation must be one of {list(_INTERPOLATION)}, got {interpolation!r}")
        self.image_size = image_size
        self.resize_size = resize_size
        self.num_channels = num_channels
        self.mode = "RGB" if num_channels == 3 else "L"
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.random_crop = random_crop
        self.hflip = hflip
        self.resample = _INTERPOLATION[interpolation]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert(self.mode)
        side = self.resize_size
        if image.size != (side, side):
            image = image.resize((side, side), self.resample)
        arr = np.asarray(image, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr.reshape(side, side, -1).copy()).permute(2, 0, 1)
        extra = side - self.image_size
        if extra:
            if self.random_crop:
                top, left = (int(v) for v in torch.randint(0, extra + 1, (2,)))
            else:
                top = left = extra // 2
            x = x[:, top : top + self.image_size, left : left + self.image_size]
        if self.hflip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return (x - self.mean) / self.std


def _describe(raw: Any, index: int) -> str:
    path = raw.get("path") if isinstance(raw, dict) else raw if isinstance(raw, str) else None
    return f"image file {path!r} (row {index})" if path else f"the image of row {index}"


def decode_image(raw: Any, index: int) -> Image.Image:
    """Decode one image cell: ``{"bytes", "path"}`` (``datasets.Image(decode=False)``),
    a path, a PIL image, or an ``(H, W[, C])`` uint8 array.

    Raises:
        ValueError: naming the file (or row) when the image cannot be decoded.
    """
    try:
        if isinstance(raw, Image.Image):
            image = raw
        elif isinstance(raw, dict) and raw.get("bytes") is not None:
            image = Image.open(io.BytesIO(raw["bytes"]))
        elif isinstance(raw, dict) and raw.get("path"):
            image = Image.open(raw["path"])
        elif isinstance(raw, str):
            image = Image.open(raw)
        elif isinstance(raw, (np.ndarray, list)):
            image = Image.fromarray(np.asarray(raw, dtype=np.uint8))
        else:
            raise TypeError(f"unsupported image value of type {type(raw).__name__}")
        image.load()  # force a full decode: truncated files fail here, not later
        return image
    except (UnidentifiedImageError, OSError, TypeError, ValueError) as e:
        raise ValueError(f"cannot decode {_describe(raw, index)}: {e}") from e


class ImageClassificationDataset(Dataset):
    """Map-style dataset of ``{"images": (C, H, W) tensor, "labels": int}`` samples
    over a Hugging Face ``datasets.Dataset``.

    Every label is checked once at construction; images are decoded lazily (the
    column is read undecoded so that a corrupt file is reported by name).

    Args:
        data (datasets.Dataset): the split.
        image_column (str): column with the images.
        label_column (str): column with integer labels in ``[0, num_classes)``.
        num_classes (int): number of classes of the model's head.
        transform (ImageClassificationTransform): image transform.

    Raises:
        ValueError: for a missing column, a non-integer label or one outside
            ``[0, num_classes)`` (naming the row and file).
    """

    def __init__(
        self,
        data,
        *,
        image_column: str,
        label_column: str,
        num_classes: int,
        transform: ImageClassificationTransform,
    ):
        for field, column in (("image_column", image_column), ("label_column", label_column)):
            if column not in data.column_names:
                raise ValueError(f"{field} {column!r} is not a column of the dataset; columns: {data.column_names}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        feature = data.features[image_column]
        if isinstance(feature, datasets.Image) and feature.decode:
            data = data.cast_column(image_column, datasets.Image(decode=False))
        self._data = data
        self.image_column = image_column
        self.label_column = label_column
        self.num_classes = num_classes
        self.transform = transform
        label_feature = data.features[label_column]
        self.class_names: Optional[List[str]] = (
            list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
        )
        self._labels = self._check_labels(list(data[label_column]))
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ValueError(
                f"num_classes is {num_classes}, but the data has {len(self.class_names)} classes "
                f"({self.class_names[:10]}{'...' if len(self.class_names) > 10 else ''}); set num_classes="
                f"{len(self.class_names)}"
            )
        self.skip_undecodable = False  # evaluation: skip (and count) images that do not decode

    def _check_labels(self, labels: List[Any]) -> List[int]:
        for i, label in enumerate(labels):
            ok = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
            if not ok or not 0 <= label < self.num_classes:
                where = _describe(self._data[i][self.image_column], i)
                raise ValueError(
                    f"label {label!r} of {where} is outside [0, {self.num_classes}): "
                    f"labels must be integers below num_classes={self.num_classes}"
                )
        return [int(v) for v in labels]

    @property
    def labels(self) -> List[int]:
        """All labels, in row order."""
        return list(self._labels)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        raw = self._data[index][self.image_column]
        try:
            image = decode_image(raw, index)
        except ValueError:
            if not self.skip_undecodable:
                raise
            log.warning(f"skipping {_describe(raw, index)}: it does not decode")
            return None  # counted by image_collate
        return {"images": self.transform(image), "labels": self._labels[index]}


def image_processor_config(transform: "ImageClassificationTransform") -> Dict[str, Any]:
    """The ``preprocessor_config.json`` of Hugging Face's ``ViTImageProcessor`` that feeds a
    model what ``transform`` (evaluation: no random crop or flip) fed it in training.

    ``ViTImageProcessor`` resizes to a square and normalises; a transform that resizes
    then centre-crops (``resize_size``) is written as a resize to ``image_size``.
    """
    resample = {Image.Resampling.NEAREST: 0, Image.Resampling.LANCZOS: 1, Image.Resampling.BILINEAR: 2,
                Image.Resampling.BICUBIC: 3}[transform.resample]
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": transform.image_size, "width": transform.image_size},
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in transform.mean.flatten()],
        "image_std": [float(v) for v in transform.std.flatten()],
    }


def image_collate(batch: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """Stack samples into ``{"images": (B, C, H, W), "labels": (B,) long, "skipped": n}``
    (``None`` samples, images skipped as undecodable, are left out and counted)."""
    kept = [s for s in batch if s is not None]
    return {
        "images": torch.stack([s["images"] for s in kept]) if kept else torch.empty(0),
        "labels": torch.tensor([s["labels"] for s in kept], dtype=torch.long),
        "skipped": len(batch) - len(kept),
    }


def _read_filelist(data_dir: Optional[str], list_file: Any):
    """An image list as a ``datasets.Dataset`` (``image`` paths, ``label`` ints).

    ``.txt``: ``<relative path> <label>`` lines (VTAB-1K's ``train800val200.txt``,
    ``test.txt``). ``.json``: ``{relative path: class id}`` (the FGVC split files of
    VPT / the GenFT authors); class ids are mapped to ``0..C-1`` in sorted order, as
    their loader does.
    """
    if list_file is None or not isinstance(list_file, (str, Path)):
        raise ValueError(f"source 'filelist' needs data_files: the path of one list file, got {list_file!r}")
    root = Path(data_dir) if data_dir is not None else Path(".")
    list_path = Path(list_file)
    if not list_path.is_absolute() and (root / list_path).is_file():
        list_path = root / list_path  # relative to data_dir first, then to the working dir
    if not list_path.is_file():
        raise FileNotFoundError(f"image list {list_path} does not exist")
    paths, labels = [], []
    if list_path.suffix == ".json":
        anno = json.loads(list_path.read_text())
        ids = {v: i for i, v in enumerate(sorted(set(anno.values())))}
        for name, cls in anno.items():
            paths.append(str(root / name))
            labels.append(ids[cls])
    else:
        for n, line in enumerate(list_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{list_path}:{n}: expected '<path> <integer label>', got {line!r}")
            paths.append(str(root / parts[0]))
            labels.append(int(parts[1]))
    data = datasets.Dataset.from_dict({"image": paths, "label": labels})
    return data.cast_column("image", datasets.Image(decode=False))


def _load(source: str, split: str, data_dir, data_files, load_dataset_kwargs):
    if source == "filelist":
        return _read_filelist(data_dir, data_files)
    path = Path(source)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"split {split!r} not in {source}; splits: {list(data)}")
            data = data[split]
        return data
    return datasets.load_dataset(source, data_dir=data_dir, data_files=data_files, split=split, **load_dataset_kwargs)


def image_classification_dataset(
    source: str = "imagefolder",
    *,
    split: str = "train",
    data_dir: Optional[str] = None,
    data_files: Any = None,
    image_column: str = "image",
    label_column: str = "label",
    num_classes: int,
    image_size: int,
    resize_size: Optional[int] = None,
    num_channels: int = 3,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    random_crop: bool = False,
    hflip: bool = False,
    interpolation: str = "bicubic",
    max_samples: Optional[int] = None,
    **load_dataset_kwargs: Any,
) -> ImageClassificationDataset:
    """Build an image-classification dataset for the GenFT image recipe.

    Examples (YAML)::

        dataset:   # an image folder: <data_dir>/<split>/<class name>/<file>
          _component_: genft_tune.datasets._image.image_classification_dataset
          source: imagefolder
          data_dir: /data/flowers
          split: train
          num_classes: 102
          image_size: 224

        dataset:   # VTAB-1K in the authors' layout
          _component_: genft_tune.datasets._image.image_classification_dataset
          source: filelist
          data_dir: /data/vtab-1k/dtd
          data_files: train800val200.txt
          ...

        dataset:   # a Hub dataset with other column names
          _component_: genft_tune.datasets._image.image_classification_dataset
          source: uoft-cs/cifar100
          image_column: img
          label_column: fine_label
          ...

    Args:
        source (str): ``load_dataset`` path, a ``save_to_disk`` directory, or
            ``"filelist"``. Default: "imagefolder"
        split (str): split to read (not used by ``"filelist"``). Default: "train"
        data_dir (Optional[str]): ``load_dataset``'s ``data_dir`` (image folders); for
            ``"filelist"`` the root the listed paths are relative to. Default: None
        data_files (Any): ``load_dataset``'s ``data_files``; for ``"filelist"`` the list
            file (``.txt`` or ``.json``, absolute or relative to ``data_dir``). Default: None
        image_column (str): image column. Default: "image"
        label_column (str): integer label column. Default: "label"
        num_classes (int): classes of the model's head; labels must lie below it.
        image_size (int): model input side.
        resize_size (Optional[int]): side before the crop. Default: None (= image_size)
        num_channels (int): 3 or 1. Default: 3
        mean (Sequence[float]): normalisation mean. Default: ImageNet
        std (Sequence[float]): normalisation std. Default: ImageNet
        random_crop (bool): random crop (training). Default: False
        hflip (bool): random horizontal flip (training). Default: False
        interpolation (str): resize filter. Default: "bicubic"
        max_samples (Optional[int]): keep only the first rows (quick runs). Default: None
        **load_dataset_kwargs (Any): passed to ``datasets.load_dataset`` (``name``,
            ``revision``, ``cache_dir``...).

    Returns:
        ImageClassificationDataset: the dataset.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data_dir {str(data_dir)!r} does not exist")
    data = _load(source, split, data_dir, data_files, load_dataset_kwargs)
    if max_samples is not None:
        data = data.select(range(min(int(max_samples), len(data))))
    transform = ImageClassificationTransform(
        image_size,
        resize_size=resize_size,
        num_channels=num_channels,
        mean=tuple(mean),
        std=tuple(std),
        random_crop=random_crop,
        hflip=hflip,
        interpolation=interpolation,
    )
    return ImageClassificationDataset(
        data,
        image_column=image_column,
        label_column=label_column,
        num_classes=num_classes,
        transform=transform,
    )


def top1_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of rows whose arg-max logit is the label."""
    return int((logits.argmax(dim=-1) == labels).sum())


__all__ = [
    "decode_image",
    "image_processor_config",
    "image_classification_dataset",
    "image_collate",
    "ImageClassificationDataset",
    "ImageClassificationTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "top1_correct",
]
