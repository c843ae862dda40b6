"""torchtune's ``FullModelHFCheckpointer`` for the families torchtune 0.6.1 lacks (Qwen3)
or converts wrongly (Gemma 2).

``model_type: QWEN3`` reads and writes Hugging Face Qwen3 checkpoints with
:mod:`genft_tune.models.qwen3`'s converter, ``GEMMA2`` with :mod:`genft_tune.models.gemma2`'s;
every other ``model_type`` is torchtune's own, unchanged::

    checkpointer:
      _component_: genft_tune.checkpointing.HFCheckpointer
      checkpoint_dir: /tmp/Qwen3-1.7B
      checkpoint_files: [model.safetensors]
      output_dir: ${output_dir}
      model_type: QWEN3
"""

import contextlib
import importlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

from torchtune.training import FullModelHFCheckpointer

from genft_tune._fs import give_open_modes, write_text_atomically
from genft_tune.cards import write_local_card
from genft_tune.models._families import family_read_by

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# safetensors' dtype names -> config.json's
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_BYTES_PER_ELEMENT = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2}


def written_dtype(folder: PathLike) -> Optional[str]:
    """The dtype (``config.json`` spelling) of most floating-point elements in the
    folder's top-level ``*.safetensors`` (read from their headers), None when there are none."""
    counts: Counter = Counter()
    for path in sorted(Path(folder).glob("*.safetensors")):
        if path.name.startswith(("genft_", "adapter_")):
            continue
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for key, info in header.items():
            if key != "__metadata__" and info.get("dtype") in _SAFETENSORS_DTYPES:
                start, end = info["data_offsets"]
                counts[_SAFETENSORS_DTYPES[info["dtype"]]] += (end - start) // _BYTES_PER_ELEMENT[info["dtype"]]
    return counts.most_common(1)[0][0] if counts else None


def write_config_dtype(folder: PathLike, dtype: str) -> bool:
    """Make ``folder/config.json`` say ``dtype`` (``torch_dtype``, and transformers 5's
    ``dtype`` where present); returns whether it changed. Atomic (temporary name, rename)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    config = json.loads(path.read_text())
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    if all(config.get(k) == dtype for k in keys):
        return False
    for k in keys:
        config[k] = dtype
    write_text_atomically(path, json.dumps(config, indent=2) + "\n")
    return True


def finalize_merged_folder(folder: PathLike, *, base_dir: Optional[PathLike]) -> None:
    """What a recipe's merged ``epoch_N`` needs after torchtune's checkpointer wrote it
    (the checkpointer copies every non-weight file of the base, unchanged):

    - ``config.json``'s dtype says what the tensors are: the merged tensors keep the
      training dtype, as torchtune's LoRA recipes write them (a bf16 run on an fp32 base
      writes bf16 tensors), and the copied config still said the base's;
    - its own model card in place of the base's ``README.md``, which describes another
      model (:func:`genft_tune.cards.write_local_card`);
    - the modes ``open()`` would give (torchtune writes 0600 safetensors).
    """
    folder = Path(folder)
    dtype = written_dtype(folder)
    if dtype is not None and write_config_dtype(folder, dtype):
        log.info(f"{folder / 'config.json'}: dtype set to {dtype}, the dtype of the merged weights")
    try:
        write_local_card(folder, base_dir=base_dir)
    except (ValueError, OSError) as e:  # no card rather than the base's
        (folder / "README.md").unlink(missing_ok=True)
        log.warning(f"No model card written to {folder}: {e}")
    give_open_modes(folder)


class HFCheckpointer(FullModelHFCheckpointer):
    """``FullModelHFCheckpointer`` that also takes ``model_type: QWEN3`` and converts
    ``GEMMA2`` right.

    Qwen3's checkpoint layout is Qwen2's plus the per-head ``q_norm``/``k_norm`` (and no
    q/k/v biases), so it follows torchtune's QWEN2 code path with Qwen3's converters
    swapped in for the duration of each load and save; GEMMA2 likewise follows
    torchtune's own path with the corrected converters.

    Args:
        model_type (str): a torchtune ``ModelType`` name, or ``QWEN3`` (``QWEN3`` and ``GEMMA2`` in
            any case).
        **kwargs: as :class:`torchtune.training.FullModelHFCheckpointer`.
    """

    def __init__(self, *, model_type: str, **kwargs: Any):
        family = family_read_by(str(model_type).upper())  # any case, as `model_type: qwen3` always was
        self._extra = family.torchtune_checkpointer if family else None  # (its model family says)
        super().__init__(model_type=self._extra.model_type if self._extra else model_type, **kwargs)

    @contextlib.contextmanager
    def _converters(self) -> Iterator[None]:
        if self._extra is None:
            yield
            return
        shared = importlib.import_module(self._extra.converter_module)
        ours = {f"{self._extra.prefix}_hf_to_tune": self._extra.hf_to_tune,
                f"{self._extra.prefix}_tune_to_hf": self._extra.tune_to_hf}
        saved = {n: getattr(shared, n) for n in ours}
        for n, fn in ours.items():  # e.g. qwen2_hf_to_tune -> qwen3_hf_to_tune, for this call only
            setattr(shared, n, fn)
        try:
            yield
        finally:
            for n, fn in saved.items():
                setattr(shared, n, fn)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        with self._converters():
            return super().load_checkpoint(*args, **kwargs)

    def save_checkpoint(
        self, state_dict: Dict[str, Any], epoch: int, intermediate_checkpoint: bool = False, adapter_only: bool = False
    ) -> None:
        with self._converters():
            super().save_checkpoint(
                state_dict, epoch, intermediate_checkpoint=intermediate_checkpoint, adapter_only=adapter_only
            )
        if not adapter_only:
            finalize_merged_folder(Path(self._output_dir) / f"epoch_{epoch}", base_dir=self._checkpoint_dir)


__all__ = ["finalize_merged_folder", "HFCheckpointer", "write_config_dtype", "written_dtype"]
