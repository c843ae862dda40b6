# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Image classification with GenFT on one device: fine-tune a ViT's GenFT adapter and
classifier head, evaluate top-1 accuracy after every epoch, save the adapter each
epoch and a merged Hugging Face ViT at the end.

Run it directly, or with torchtune's launcher once the recipe module is importable
(installed, or from this directory)::

    python recipes/genft_finetune_image_single_device.py --config configs/vit/tiny_genft_cpu.yaml \
        data_dir=/path/to/image_folder num_classes=10
    tune run genft_finetune_image_single_device --config vit/b16_genft_vtab \
        data_dir=/data/vtab-1k/dtd num_classes=47

``--config`` takes a yaml path or a packaged config name (``vit/tiny_genft_cpu``,
``vit/b16_genft_vtab``, ``vit/b16_genft_fgvc``, ``vit/b16_wegeft_vtab``; see ``genft-tune ls``).

(``tune run recipes/<file>.py`` does not work: torchtune turns the path into the
module ``recipes.<file>``, and ``recipes`` is torchtune's own package.)

The same recipe trains the baselines the GenFT paper compares with: WeGeFT
(``genft_tune.models.vit.vit_*_wegeft``), a LoRA model (``genft_tune.models.vit.vit_*_lora``), linear probing (a plain ``vit_*`` model with
``trainable_modules: [head]``) and full fine-tuning (``trainable_modules: all``).
"""

import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import genft_tune  # noqa: F401  (first: lets torchtune import with the pinned torchao)
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader
from torchtune import config, training, utils
from torchtune.modules.peft import (
    get_adapter_params,
    get_merged_lora_ckpt,
    LoRALinear,
    set_trainable_params,
)
from torchtune.recipe_interfaces import FTRecipeInterface
from tqdm import tqdm

from genft_tune import training as genft_training
from genft_tune._file_names import TRAINED_MODULES_CONFIG_FILE, TRAINED_MODULES_WEIGHTS_FILE
from genft_tune._recipe_registry import resolve_config_argv
from genft_tune.cards import base_hub_id
from genft_tune.checkpointing import PeftFormatError, save_peft_lora
from genft_tune.datasets import image_collate, image_processor_config, top1_correct
from genft_tune.models.vit import (
    load_hf_vit_state_dict,
    load_timm_vit_state_dict,
    load_vit_state_dict,
    read_state_dict,
    save_hf_vit,
    save_json,
    save_safetensors,
    vit_hf_config,
    ViTClassifier,
)

log = utils.get_logger("INFO")

CHECKPOINT_FORMATS = ("hf", "timm", "tune")
EVAL_RESULTS_FILE = "eval_results.json"
HF_MODEL_DIR = "hf_model"


class GenFTImageClassificationRecipeSingleDevice(FTRecipeInterface):
    """GenFT fine-tuning of a ViT image classifier on a single device (CPU or GPU).

    Features:
        - Models: any builder returning a :class:`~genft_tune.models.vit.ViTClassifier`
          (GenFT, LoRA or plain). Trained: the adapter parameters
          (``get_adapter_params``) plus the modules named in ``trainable_modules``
          (default ``[head]``; ``all`` trains everything).
        - Weights: ``checkpoint.path`` in Hugging Face (``ViTModel`` /
          ``ViTForImageClassification``), timm or our own layout; a fresh head when
          the checkpoint's is missing, of another size, or ``reset_head``.
        - Precision: ``dtype`` fp32 or bf16 (everything in that dtype, LayerNorms in
          fp32, as torchtune's recipes); fp16 is refused.
        - Optimisation: any optimizer (AdamW in the configs), a per-step
          learning-rate schedule (warmup + cosine in the configs), label smoothing
          through the loss, gradient accumulation (the last, partial accumulation of
          an epoch also steps), optional gradient clipping.
        - Evaluation: top-1 accuracy on ``eval_dataset`` after every
          ``eval_every_n_epochs`` epochs, logged and appended to ``eval_results.json``.
        - Checkpoints after each epoch: GenFT/WeGeFT models write
          ``epoch_{n}/genft_adapter.safetensors`` + ``genft_config.json``
          (:func:`genft_tune.training.save_adapter_files`; the trained head as
          ``modules_to_save``, so ``genft-tune merge`` can fold it into the base);
          LoRA models write PEFT's own LoRA of the Hugging Face ViT,
          ``adapter_model.safetensors`` + ``adapter_config.json``
          (:func:`genft_tune.checkpointing.save_peft_lora`: Hugging Face module
          names, the trained head as ``modules_to_save: [classifier]``), which
          ``PeftModel.from_pretrained`` loads onto ``ViTForImageClassification``; plain
          models (linear probing, full fine-tuning), and LoRA runs that PEFT's LoRA cannot
          hold (e.g. ``trainable_modules: all``), write the trained tensors in our naming
          (``layers.0.attn.q_proj.weight``, ``head.weight``) as
          ``trained_modules.safetensors`` + ``trained_modules.json`` (``trainable_modules``,
          ``num_classes``, the ``model`` config; LoRA's ``target_modules``, ``r``,
          ``lora_alpha``), not under PEFT's file names: they are no PEFT adapter. At the end
          a merged Hugging Face ``ViTForImageClassification`` in ``hf_model/``
          (``save_merged``) that loads without this package.

    Resuming a run mid-way is not supported.

    Args:
        cfg (DictConfig): the parsed config.

    Raises:
        ValueError: for fp16, or an invalid config field (named in the message).
    """

    def __init__(self, cfg: DictConfig) -> None:
        self._device = utils.get_device(device=cfg.get("device", "cpu"))
        self._dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self._device)
        if self._dtype == torch.float16:
            raise ValueError("fp16 is not supported by this recipe: use dtype fp32 or bf16")
        self._output_dir = Path(cfg.output_dir)
        self._log_every_n_steps = int(cfg.get("log_every_n_steps", 1))
        self.seed = training.set_seed(seed=cfg.get("seed", None))
        self.total_epochs = int(cfg.epochs)
        self.max_steps_per_epoch = cfg.get("max_steps_per_epoch", None)
        self._gradient_accumulation_steps = int(cfg.get("gradient_accumulation_steps", 1))
        if self._gradient_accumulation_steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be >= 1, got {self._gradient_accumulation_steps}"
            )
        self._clip_grad_norm = cfg.get("clip_grad_norm", None)
        self._eval_every_n_epochs = int(cfg.get("eval_every_n_epochs", 1))
        self._save_merged = bool(cfg.get("save_merged", True))
        self.epochs_run = 0
        self.global_step = 0
        self.eval_results: List[Dict[str, Any]] = []

    # ---- setup ------------------------------------------------------------------

    def load_checkpoint(self, cfg_checkpoint: Optional[DictConfig]) -> Dict[str, Any]:
        """Load the base weights named by ``checkpoint`` into ``self._model``.

        Returns:
            Dict[str, Any]: what the loader reports (``head_reset``, ``pos_embed_resized``);
            empty when ``checkpoint.path`` is null (training from scratch).
        """
        if cfg_checkpoint is None or cfg_checkpoint.get("path") is None:
            log.info("No checkpoint.path: training from the random init.")
            return {}
        fmt = cfg_checkpoint.get("format", "hf")
        if fmt not in CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint.format must be one of {list(CHECKPOINT_FORMATS)}, got {fmt!r}")
        kwargs = dict(
            reset_head=bool(cfg_checkpoint.get("reset_head", False)),
            interpolate_pos_embed=bool(cfg_checkpoint.get("interpolate_pos_embed", True)),
        )
        path = cfg_checkpoint.path
        if fmt == "hf":
            info = load_hf_vit_state_dict(self._model, path, **kwargs)
        elif fmt == "timm":
            info = load_timm_vit_state_dict(self._model, path, **kwargs)
        else:
            info = load_vit_state_dict(self._model, read_state_dict(path), **kwargs)
        log.info(f"Loaded {fmt} weights from {path}: {info}")
        return info

    def setup(self, cfg: DictConfig) -> None:
        """Build the metric logger, model (and load its weights), data, optimizer,
        loss and learning-rate schedule."""
        self._metric_logger = config.instantiate(cfg.metric_logger)
        self._metric_logger.log_config(cfg)
        self._cfg = cfg

        self._model = self._setup_model(cfg.model)
        self.load_checkpoint(cfg.get("checkpoint", None))
        self._set_trainable(cfg.get("trainable_modules", ["head"]))

        self._loss_fn = config.instantiate(cfg.loss)
        self._train_data = self._instantiate_dataset(cfg.dataset, "dataset")
        self._dataloader = self._setup_dataloader(
            self._train_data,
            batch_size=int(cfg.batch_size),
            shuffle=bool(cfg.get("shuffle", True)),
            drop_last=bool(cfg.get("drop_last", False)),
            num_workers=int(cfg.get("num_workers", 0)),
        )
        self._eval_data = None
        if cfg.get("eval_dataset", None) is not None:
            self._eval_data = self._instantiate_dataset(cfg.eval_dataset, "eval_dataset")
            # an image that does not decode must not cost the trained epoch: skip, count, warn
            self._eval_data.skip_undecodable = True
            self._eval_dataloader = self._setup_dataloader(
                self._eval_data,
                batch_size=int(cfg.get("eval_batch_size", cfg.batch_size)),
                shuffle=False,
                drop_last=False,
                num_workers=int(cfg.get("num_workers", 0)),
            )

        batches = len(self._dataloader)
        self._steps_per_epoch = math.ceil(batches / self._gradient_accumulation_steps)
        if self.max_steps_per_epoch is not None:
            self._steps_per_epoch = min(self._steps_per_epoch, int(self.max_steps_per_epoch))
        if self._steps_per_epoch == 0:
            raise ValueError("the training dataset is empty (0 optimizer steps per epoch)")

        params = [p for p in self._model.parameters() if p.requires_grad]
        self._optimizer = config.instantiate(cfg.optimizer, params)
        self._lr_scheduler = None
        if cfg.get("lr_scheduler", None) is not None:
            self._lr_scheduler = config.instantiate(
                cfg.lr_scheduler,
                self._optimizer,
                num_training_steps=self.total_epochs * self._steps_per_epoch,
                last_epoch=-1,
            )
        log.info(
            f"{len(self._train_data)} training images, {self._steps_per_epoch} steps/epoch, "
            f"{self.total_epochs} epochs; {sum(p.numel() for p in params):,} trainable parameters"
        )

    def _setup_model(self, cfg_model: DictConfig) -> ViTClassifier:
        with training.set_default_dtype(self._dtype), self._device:
            model = config.instantiate(cfg_model)
        if not isinstance(model, ViTClassifier):
            raise ValueError(
                f"model must build a genft_tune.models.vit.ViTClassifier, got {type(model).__name__}"
            )
        # GenFT, WeGeFT, or None (LoRA / linear probe / full fine-tuning).
        self._adapter = genft_training.find_model_adapter(model)
        if self._adapter is not None:
            log.info(f"{self._adapter.label} adapter: {len(self._adapter.target_modules)} layers ({self._adapter.config})")
        return model

    def _set_trainable(self, trainable_modules: Any) -> None:
        model = self._model
        adapter = get_adapter_params(model)
        if trainable_modules == "all":
            trainable = dict(model.named_parameters())
            names = ["all"]
        else:
            if isinstance(trainable_modules, str) or not isinstance(trainable_modules, (list, ListConfig)):
                raise ValueError(
                    f"trainable_modules must be a list of module names or 'all', got {trainable_modules!r}"
                )
            names = list(trainable_modules)
            trainable = dict(adapter)
            for name in names:
                try:
                    module = model.get_submodule(name)
                except AttributeError as e:
                    raise ValueError(f"trainable_modules entry {name!r} is not a module of the model") from e
                trainable.update({f"{name}.{n}": p for n, p in module.named_parameters()})
        if not trainable:
            raise ValueError("nothing to train: the model has no adapter and trainable_modules is empty")
        set_trainable_params(model, trainable)
        self._trainable_modules = names
        self._adapter_keys = set(adapter)
        self._trainable_names = set(trainable)
        training.validate_expected_param_dtype(
            [(n, p) for n, p in model.named_parameters() if p.requires_grad], dtype=self._dtype
        )

    def _instantiate_dataset(self, cfg_dataset: DictConfig, field: str):
        try:
            dataset = config.instantiate(cfg_dataset)
        except (ValueError, FileNotFoundError) as e:  # the data's mistakes: named, no traceback
            e.user_error = True
            raise
        num_classes = getattr(dataset, "num_classes", None)
        if num_classes is not None and num_classes != self._model.num_classes:
            raise ValueError(
                f"{field}.num_classes ({num_classes}) differs from the model's num_classes "
                f"({self._model.num_classes})"
            )
        return dataset

    def _setup_dataloader(self, dataset, *, batch_size: int, shuffle: bool, drop_last: bool, num_workers: int):
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            collate_fn=image_collate,
            generator=generator,
        )

    # ---- evaluation -----------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """Top-1 accuracy of the current model on ``eval_dataset``.

        Returns:
            Dict[str, Any]: ``{"top1", "correct", "total"}``.
        """
        was_training = self._model.training
        self._model.eval()
        correct = total = skipped = 0
        for batch in tqdm(self._eval_dataloader, desc="eval", leave=False):
            skipped += batch["skipped"]
            if batch["labels"].numel() == 0:
                continue
            images = batch["images"].to(self._device)
            labels = batch["labels"].to(self._device)
            correct += top1_correct(self._model(images).float(), labels)
            total += labels.numel()
        self._model.train(was_training)
        if skipped:
            log.warning(f"evaluation skipped {skipped} image(s) that do not decode (named above)")
        result = {"top1": correct / total if total else float("nan"), "correct": correct, "total": total}
        return {**result, "skipped": skipped} if skipped else result

    # ---- checkpoints ----------------------------------------------------------------

    def _adapter_config(self) -> Dict[str, Any]:
        model = self._model
        adapter = self._adapter
        lora = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
        cfg: Dict[str, Any] = {}
        if adapter:  # the method's PEFT type, as its registry entry names it (None: it has no PEFT format)
            cfg["peft_type"] = adapter.kind.peft_names.peft_type if adapter.kind.peft_names else None
        cfg.update(
            target_modules=sorted(adapter.target_modules if adapter else lora),
            trainable_modules=self._trainable_modules,
            num_classes=model.num_classes,
            model=OmegaConf.to_container(self._cfg.model, resolve=True),
        )
        if adapter:
            cfg[f"{adapter.name}_config"] = adapter.config.to_dict()
        if lora:
            first = next(iter(lora.values()))
            cfg.update({"r": first.rank, "lora_alpha": first.alpha})
        return cfg

    def _merged_state_dict(self) -> Dict[str, torch.Tensor]:
        """The model as a plain ViT state dict: GenFT / WeGeFT merged in fp32 from the
        original ``W0`` (dequantised when NF4), LoRA merged with torchtune's formula."""
        model = self._model
        # NF4 bases (quantize_base) are dequantised: the merged model is a plain one.
        state_dict = {
            k: v.detach().cpu() for k, v in genft_training.dequantize_state_dict(model.state_dict()).items()
        }
        if self._adapter is not None:
            state_dict = self._adapter.merge_state_dict(state_dict)
        lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
        if lora:
            # get_merged_lora_ckpt edits in place: give it copies, not the model's tensors.
            state_dict = {k: v.clone() for k, v in state_dict.items()}
            state_dict = get_merged_lora_ckpt(state_dict, rank=lora[0].rank, alpha=lora[0].alpha)
        return state_dict

    def _save_peft_lora(self, epoch_dir: Path, trained: Dict[str, torch.Tensor]) -> bool:
        """PEFT's LoRA of the Hugging Face ViT, for a LoRA model whose other trained
        tensors PEFT can hold as ``modules_to_save``; False (nothing written) otherwise."""
        if not any(isinstance(m, LoRALinear) for m in self._model.modules()):
            return False
        base_dir = self._cfg.get("checkpoint", {}).get("path")
        try:
            save_peft_lora(
                epoch_dir,
                self._model,
                hf_config=vit_hf_config(self._model),
                modules_to_save={k: v for k, v in trained.items() if k not in self._adapter_keys},
                base_model_name_or_path=base_hub_id(base_dir) or (str(base_dir) if base_dir else None),
            )
        except PeftFormatError as e:
            log.info(f"No PEFT LoRA files ({e}): the trained tensors go to {TRAINED_MODULES_WEIGHTS_FILE}")
            return False
        return True

    def save_checkpoint(self, epoch: int) -> None:
        """Save the adapter and trained modules for ``epoch``; after the last epoch
        also the merged Hugging Face model."""
        epoch_dir = self._output_dir / f"epoch_{epoch}"
        state_dict = self._model.state_dict()
        method = self._adapter
        is_key = method.is_key if method is not None else (lambda k: False)
        adapter = {k: v for k, v in state_dict.items() if k in self._trainable_names or is_key(k)}
        if method is not None:
            # genft_adapter.safetensors + genft_config.json: what `genft-tune merge` reads;
            # the trained head (and other trained modules) travel as modules_to_save.
            class_names = getattr(self._train_data, "class_names", None)
            extra = self._adapter_config()
            if class_names and len(class_names) == self._model.num_classes:
                extra["id2label"] = {str(i): str(n) for i, n in enumerate(class_names)}
            genft_training.save_adapter_files(
                epoch_dir,
                adapter=method,
                adapter_state_dict={k: v for k, v in adapter.items() if is_key(k)},
                base_dir=self._cfg.get("checkpoint", {}).get("path"),
                extra=extra,
                modules_to_save={k: v for k, v in adapter.items() if not is_key(k)},
            )
        elif not self._save_peft_lora(epoch_dir, adapter):
            # not PEFT's file names: these are no PEFT adapter
            save_safetensors(adapter, epoch_dir / TRAINED_MODULES_WEIGHTS_FILE)
            save_json(self._adapter_config(), epoch_dir / TRAINED_MODULES_CONFIG_FILE)
        log.info(f"Adapter and trained modules ({len(adapter)} tensors) saved to {epoch_dir}")
        if self._save_merged and epoch + 1 == self.total_epochs:
            class_names = getattr(self._train_data, "class_names", None)
            id2label = dict(enumerate(class_names)) if class_names else None
            if id2label is not None and len(id2label) != self._model.num_classes:
                id2label = None
            out = save_hf_vit(
                self._merged_state_dict(),
                config=vit_hf_config(self._model, id2label=id2label),
                output_dir=self._output_dir / HF_MODEL_DIR,
            )
            processor = image_processor_config(getattr(self._eval_data, "transform", None) or self._train_data.transform)
            save_json(processor, out / "preprocessor_config.json")
            log.info(f"Merged Hugging Face ViTForImageClassification (and its image processor) saved to {out}")

    # ---- training -------------------------------------------------------------------

    def train(self) -> None:
        """The training loop: epochs of (accumulated) optimizer steps, evaluation and
        checkpointing after each epoch."""
        ga = self._gradient_accumulation_steps
        self._model.train()
        for epoch in range(self.epochs_run, self.total_epochs):
            pbar = tqdm(total=self._steps_per_epoch, desc=f"epoch {epoch + 1}")
            running_loss, num_samples, steps_this_epoch = 0.0, 0, 0
            t0 = time.perf_counter()
            batches = len(self._dataloader)
            for idx, batch in enumerate(self._dataloader):
                images = batch["images"].to(self._device)
                labels = batch["labels"].to(self._device)
                logits = self._model(images)
                loss = self._loss_fn(logits.float(), labels)
                n = labels.numel()
                (loss * n).backward()  # sum over samples; normalised at the step
                running_loss += loss.item() * n
                num_samples += n
                if (idx + 1) % ga != 0 and idx + 1 != batches:
                    continue
                training.scale_grads(self._model, torch.tensor(1.0 / num_samples))
                grad_norm = None
                if self._clip_grad_norm is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        [p for p in self._model.parameters() if p.requires_grad],
                        max_norm=float(self._clip_grad_norm),
                    )
                self._optimizer.step()
                self._optimizer.zero_grad(set_to_none=True)
                if self._lr_scheduler is not None:
                    self._lr_scheduler.step()
                self.global_step += 1
                steps_this_epoch += 1
                loss_value = running_loss / num_samples
                pbar.update(1)
                pbar.set_description(f"{epoch + 1}|{self.global_step}|Loss: {loss_value:.4f}")
                if self.global_step % self._log_every_n_steps == 0:
                    elapsed = time.perf_counter() - t0
                    metrics = {
                        "loss": loss_value,
                        "lr": self._optimizer.param_groups[0]["lr"],
                        "images_per_second": num_samples / elapsed if elapsed > 0 else 0.0,
                    }
                    if grad_norm is not None:
                        metrics["grad_norm"] = float(grad_norm)
                    self._metric_logger.log_dict(metrics, step=self.global_step)
                running_loss, num_samples = 0.0, 0
                t0 = time.perf_counter()
                if steps_this_epoch == self._steps_per_epoch:
                    break
            pbar.close()
            self.epochs_run += 1
            self.save_checkpoint(epoch=epoch)  # before evaluation: a failing evaluation keeps the epoch
            if self._eval_data is not None and (
                (epoch + 1) % self._eval_every_n_epochs == 0 or epoch + 1 == self.total_epochs
            ):
                result = {"epoch": epoch + 1, "step": self.global_step, **self.evaluate()}
                self.eval_results.append(result)
                log.info(
                    f"Epoch {epoch + 1}: top-1 accuracy {result['top1']:.4f} "
                    f"({result['correct']}/{result['total']})"
                )
                self._metric_logger.log_dict({"eval_top1": result["top1"]}, step=self.global_step)
                save_json(self.eval_results, self._output_dir / EVAL_RESULTS_FILE)

    def cleanup(self) -> None:
        self._metric_logger.close()


def run(cfg: DictConfig) -> GenFTImageClassificationRecipeSingleDevice:
    """Set up, train and clean up; returns the recipe (its ``eval_results``, model...)."""
    config.log_config(recipe_name="GenFTImageClassificationRecipeSingleDevice", cfg=cfg)
    recipe = GenFTImageClassificationRecipeSingleDevice(cfg=cfg)
    try:
        recipe.setup(cfg=cfg)
        recipe.train()
    finally:
        if hasattr(recipe, "_metric_logger"):
            recipe.cleanup()
    return recipe


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point: the config file, overridden by ``key=value`` arguments. A user's
    mistake (in the config or the data) is one message and exit status 2, no traceback."""
    with genft_training.user_errors("genft_finetune_image_single_device"):
        genft_training.validate_image_recipe_config(cfg)
        run(cfg)


if __name__ == "__main__":
    resolve_config_argv(sys.argv)
    sys.exit(recipe_main())
