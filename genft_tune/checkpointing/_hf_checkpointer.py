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
from typing import Any, Dict, Iterator

from torchtune.training import FullModelHFCheckpointer

# our model_type -> (torchtune model_type whose code path it shares, its converter module
# attribute names, our converters' import path)
_EXTRA_MODEL_TYPES = {
    "QWEN3": ("QWEN2", "torchtune.models.qwen2._convert_weights", "qwen2", "genft_tune.models.qwen3", "qwen3"),
    # torchtune's own GEMMA2 converter swaps the two MLP norms (see genft_tune.models.gemma2)
    "GEMMA2": ("GEMMA2", "torchtune.models.gemma2._convert_weights", "gemma2", "genft_tune.models.gemma2", "gemma2"),
}


class HFCheckpointer(FullModelHFCheckpointer):
    """``FullModelHFCheckpointer`` that also takes ``model_type: QWEN3`` and converts
    ``GEMMA2`` right.

    Qwen3's checkpoint layout is Qwen2's plus the per-head ``q_norm``/``k_norm`` (and no
    q/k/v biases), so it follows torchtune's QWEN2 code path with Qwen3's converters
    swapped in for the duration of each load and save; GEMMA2 likewise follows
    torchtune's own path with the corrected converters.

    Args:
        model_type (str): a torchtune ``ModelType`` name, or ``QWEN3``.
        **kwargs: as :class:`torchtune.training.FullModelHFCheckpointer`.
    """

    def __init__(self, *, model_type: str, **kwargs: Any):
        self._extra = _EXTRA_MODEL_TYPES.get(str(model_type).upper())
        super().__init__(model_type=self._extra[0] if self._extra else model_type, **kwargs)

    @contextlib.contextmanager
    def _converters(self) -> Iterator[None]:
        if self._extra is None:
            yield
            return
        import importlib

        _, theirs_path, theirs, ours_path, ours = self._extra
        shared_path, ours_module = importlib.import_module(theirs_path), importlib.import_module(ours_path)
        names = [f"{theirs}_hf_to_tune", f"{theirs}_tune_to_hf"]
        saved = [getattr(shared_path, n) for n in names]
        for n in names:  # e.g. qwen2_hf_to_tune -> qwen3_hf_to_tune, for this call only
            setattr(shared_path, n, getattr(ours_module, n.replace(theirs, ours)))
        try:
            yield
        finally:
            for n, fn in zip(names, saved):
                setattr(shared_path, n, fn)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        with self._converters():
            return super().load_checkpoint(*args, **kwargs)

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        with self._converters():
            return super().save_checkpoint(*args, **kwargs)


__all__ = ["HFCheckpointer"]
