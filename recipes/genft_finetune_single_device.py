# Copyright (c) genft-tune authors.
# Adapted from torchtune's recipes/lora_finetune_single_device.py
# (Copyright (c) Meta Platforms, Inc. and affiliates.)
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""GenFT fine-tuning on one device (GPU or CPU).

The model config picks the adapter: GenFT (``genft_*`` builders) or WeGeFT
(``wegeft_*`` builders); see :func:`genft_tune.training.get_model_adapter`.

Run it with ``tune run genft_finetune_single_device --config <config>`` (installed
module; ``genft-tune ls`` lists the configs), or from a checkout with
``python recipes/genft_finetune_single_device.py --config configs/<family>/<name>.yaml``.
"""

import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union
from warnings import warn

import genft_tune  # noqa: F401  (first: lets torchtune import with the pinned torchao)
import torch
import torch.nn.functional as F
import torchtune.modules.common_utils as common_utils
from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.optim import Optimizer
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from torchtune import config, modules, training, utils
from torchtune.config._utils import _get_component_from_path
from torchtune.datasets import ConcatDataset
from torchtune.modules.peft import get_adapter_params, set_trainable_params
from torchtune.recipe_interfaces import FTRecipeInterface
from torchtune.training import DummyProfiler, PROFILER_KEY
from tqdm import tqdm

from genft_tune import training as genft_training
from genft_tune._recipe_registry import resolve_config_argv
from genft_tune.checkpointing import finalize_merged_folder
from genft_tune.checkpointing import read_adapter

log = utils.get_logger("DEBUG")


class GenFTFinetuneRecipeSingleDevice(FTRecipeInterface):
    """
    GenFT fine-tuning recipe for dense transformer LLMs (Llama 2/3.x, SmolLM2) on a
    single device, GPU or CPU. Only the GenFT adapter is trained: each layer-shared
    generator once, plus every adapted layer's specific factors; the base is frozen.

    The same recipe trains WeGeFT models (``wegeft_*`` builders): the adapter method is
    read from the built model (``genft_tune.training.get_model_adapter``).

    Features:
        - Activation checkpointing (``enable_activation_checkpointing``) and activation
          offloading (``enable_activation_offloading``, CUDA only; needs checkpointing).
        - ``compile``: per-layer ``torch.compile`` of the model and of the loss.
        - Precision: ``dtype`` fp32 or bf16 (fp16 is refused). torchao switches:
          ``optimizer._component_: torchao.optim.AdamW8bit`` / ``AdamW4bit`` (low-bit
          optimizer state), ``torchao.optim._AdamW`` with ``bf16_stochastic_round: True``
          (bf16 weights updated with stochastic rounding; needs ``dtype: bf16``), an NF4
          base (the ``qgenft_*`` model builders), and ``enable_fp8_training`` (the frozen
          base ``nn.Linear`` layers in float8, ``fp8_recipe_name`` tensorwise/rowwise;
          CUDA with compute capability 8.9+).
        - Gradient accumulation (``gradient_accumulation_steps``), gradient clipping
          (``clip_grad_norm``), any LR scheduler (e.g. cosine with warmup), any torchtune
          dataset, tokenizer and loss; the loss is normalised by the number of
          unmasked tokens over the whole accumulated batch.
        - Validation: with ``dataset_val``, the token-normalised validation loss is
          logged at the end of each epoch and every ``run_val_every_n_steps`` steps
          (at most ``max_validation_steps`` batches).
        - Checkpoints: the GenFT adapter (``genft_adapter.safetensors`` +
          ``genft_config.json``, each shared generator once) and the recipe state
          (``recipe_state/recipe_state.pt``: optimizer, data position, RNG) every
          ``save_every_n_steps`` steps and at each epoch end. ``resume_from_checkpoint:
          True`` continues from the last one, mid-epoch included, and reproduces the
          uninterrupted run's losses. At the end the adapter is merged into the base
          (``W0 + dW`` in fp32) and saved by the configured torchtune checkpointer in the
          base model's own format (HF safetensors for an HF checkpoint), loadable
          without this package; ``save_adapter_weights_only: True`` skips that.
        - Logging: any torchtune metric logger, tqdm progress bar, torch profiler.
        - Mistakes and accidents: ``recipe_main`` runs ``genft_training.preflight`` (config
          keys, checkpoint against the model, data) before anything loads; a row that fails
          to tokenize or loses every label to truncation is skipped and counted; Ctrl-C
          finishes a checkpoint being written, then exits 130 naming the step to resume from.

    Args:
        cfg (DictConfig): OmegaConf object parsed from yaml file

    Raises:
        ValueError: If ``dtype`` is fp16, or the config fails a pre-flight check.
        RuntimeError: If ``enable_activation_offloading`` is True and the device is not
            CUDA or activation checkpointing is off, or a float8 feature is asked for on
            a device without float8.
    """

    def __init__(self, cfg: DictConfig) -> None:
        # Fail on a bad config before anything is loaded.
        genft_training.validate_recipe_config(cfg)

        self._device = utils.get_device(device=cfg.device)
        self._dtype = training.get_dtype(cfg.dtype, device=self._device)
        if self._dtype == torch.float16:
            raise ValueError(
                "fp16 precision is not supported in this recipe. Please use fp32 or bf16."
            )

        self._output_dir = Path(cfg.output_dir)
        self._log_every_n_steps = cfg.get("log_every_n_steps", 1)
        self._log_peak_memory_stats = cfg.get("log_peak_memory_stats", False)
        if self._log_peak_memory_stats and self._device.type == "cpu":
            log.info(
                "log_peak_memory_stats was set to True, however, training uses cpu. Setting log_peak_memory_stats=False."
            )
            self._log_peak_memory_stats = False

        # Recipe state, updated by ``load_checkpoint`` when resuming.
        self.seed = training.set_seed(
            seed=cfg.seed, debug_mode=cfg.get("cudnn_deterministic_mode", None)
        )
        self.epochs_run = 0
        self.total_epochs = cfg.epochs
        self.max_steps_per_epoch = cfg.max_steps_per_epoch
        self.global_step = 0
        self._steps_in_epoch = 0
        self._last_checkpoint: Optional[str] = None  # named by the Ctrl-C message
        self._checked_datasets = []  # CheckedRows: skipped rows, reported per epoch
        self._resume_from_checkpoint = cfg.get("resume_from_checkpoint", False)
        self._save_adapter_weights_only = cfg.get("save_adapter_weights_only", False)
        self._save_every_n_steps = cfg.get("save_every_n_steps", None)
        self._gradient_accumulation_steps = cfg.get("gradient_accumulation_steps", 1)
        self._clip_grad_norm = cfg.get("clip_grad_norm", None)
        self._run_val_every_n_steps = cfg.get("run_val_every_n_steps", None)
        self._max_validation_steps = cfg.get("max_validation_steps", None)

        # activation checkpointing/offloading
        self._enable_activation_checkpointing = cfg.get(
            "enable_activation_checkpointing", False
        )
        self._enable_activation_offloading = cfg.get(
            "enable_activation_offloading", False
        )
        if self._enable_activation_offloading:
            if self._device.type != "cuda":
                raise RuntimeError(
                    "enable_activation_offloading should only be True when training on CUDA "
                    f"(this run uses device {self._device.type!r}); set enable_activation_offloading: False"
                )
            if not self._enable_activation_checkpointing:
                raise RuntimeError(
                    "enable_activation_offloading should only be True when enable_activation_checkpointing is True"
                )
        elif self._enable_activation_checkpointing and self._device.type == "cuda":
            log.info(
                "Hint: enable_activation_checkpointing is True, but enable_activation_offloading isn't. "
                "Enabling activation offloading should reduce memory further.",
            )

        # torchao low-precision switches
        self._enable_fp8_training = cfg.get("enable_fp8_training", False)
        self._fp8_recipe_name = cfg.get("fp8_recipe_name", None)
        if self._enable_fp8_training:
            genft_training.validate_fp8_training(self._device, self._fp8_recipe_name)
        genft_training.validate_optimizer_config(
            cfg.optimizer, dtype=self._dtype, device=self._device
        )

    def load_checkpoint(
        self, cfg_checkpointer: DictConfig
    ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
        """
        Load the base model weights with the torchtune checkpointer and, when resuming,
        the recipe state and the GenFT adapter that ``save_checkpoint`` wrote to
        ``output_dir``.

        Returns:
            Tuple: (base model state dict, recipe state or None, adapter state dict or None)
        """
        # The checkpointer only ever loads the base: GenFT adapters and recipe state are
        # read by this recipe (torchtune's checkpointers know LoRA's adapter format only).
        self._checkpointer = config.instantiate(
            cfg_checkpointer, should_load_recipe_state=False
        )
        checkpoint_dict = self._checkpointer.load_checkpoint()
        base_state_dict = checkpoint_dict[training.MODEL_KEY]

        if not self._resume_from_checkpoint:
            return base_state_dict, None, None
        recipe_state = genft_training.load_recipe_state(self._output_dir)
        self._last_checkpoint = recipe_state[genft_training.ADAPTER_DIR_KEY]
        adapter_dir = self._output_dir / recipe_state[genft_training.ADAPTER_DIR_KEY]
        # ours, or PEFT's pair when only that is there
        adapter_state_dict, adapter_config = read_adapter(
            adapter_dir, base_dir=genft_training.checkpoint_dir_of(self._checkpointer)
        )
        self._resume_adapter_config = adapter_config
        self._update_recipe_state(recipe_state)
        log.info(f"Resuming from {adapter_dir} (step {self.global_step}).")
        return base_state_dict, recipe_state, adapter_state_dict

    def _update_recipe_state(self, ckpt_dict: Dict[str, Any]) -> None:
        """
        Updates the recipe state from checkpoint.
        """
        try:
            self.epochs_run = ckpt_dict[training.EPOCHS_KEY]
            self.global_step = ckpt_dict[training.STEPS_KEY]
            self._steps_in_epoch = ckpt_dict[genft_training.STEPS_IN_EPOCH_KEY]

            # on mismatch, warn the user and prevent the override
            if self.seed != ckpt_dict[training.SEED_KEY]:
                warn(
                    message=(
                        "Config value for seed does not match the checkpoint value, "
                        f"using the checkpoint value: {ckpt_dict[training.SEED_KEY]}"
                    )
                )
                self.seed = ckpt_dict[training.SEED_KEY]
            if self.max_steps_per_epoch != ckpt_dict[training.MAX_STEPS_KEY]:
                warn(
                    message=(
                        "Config value for max_steps_per_epoch does not match the checkpoint value, "
                        f"using the checkpoint value: {ckpt_dict[training.MAX_STEPS_KEY]}"
                    )
                )
                self.max_steps_per_epoch = ckpt_dict[training.MAX_STEPS_KEY]

            # more epochs is how a finished run trains further (docs/own_data.md): say so, no warning
            if self.total_epochs != ckpt_dict[training.TOTAL_EPOCHS_KEY]:
                log.info(
                    f"Training to epochs={self.total_epochs} (the checkpoint's run was set for "
                    f"{ckpt_dict[training.TOTAL_EPOCHS_KEY]})"
                )

        except KeyError as e:
            raise KeyError(
                "Checkpoint does not contain the required keys needed for updating recipe state. "
                "Are you sure you passed in the right recipe checkpoint?"
            ) from e

    def setup(self, cfg: DictConfig) -> None:
        """
        Setup the recipe state. This includes recipe state (if resume_from_checkpoint is True),
        model, tokenizer, loss, optimizer, learning rate scheduler, sampler, and dataloader.
        """
        self._compile = cfg.get("compile", False)
        if cfg.device == "npu" and self._compile:
            raise ValueError(
                "NPU does not support model compilation. Please set `compile: False` in the config."
            )
        base_state_dict, recipe_state, adapter_state_dict = self.load_checkpoint(
            cfg_checkpointer=cfg.checkpointer
        )

        # hack to toggle to the low cpu ram version of the reparametrize_as_dtype
        # hook based on the config.
        common_utils._use_low_cpu_ram = cfg.get("low_cpu_ram", False)

        self._model = self._setup_model(
            cfg_model=cfg.model,
            enable_activation_checkpointing=self._enable_activation_checkpointing,
            enable_activation_offloading=self._enable_activation_offloading,
            compile_model=self._compile,
            base_model_state_dict=base_state_dict,
            adapter_state_dict=adapter_state_dict,
        )
        del base_state_dict

        self._tokenizer = config.instantiate(cfg.tokenizer)
        log.info("Tokenizer is initialized from file.")

        self._optimizer = self._setup_optimizer(
            cfg_optimizer=cfg.optimizer,
            opt_state_dict=recipe_state[training.OPT_KEY] if recipe_state else None,
        )

        # initialize loss
        self._loss_fn = config.instantiate(cfg.loss)
        if self._compile:
            self._loss_fn = training.compile_loss(self._loss_fn)

        if self._loss_fn.__class__.__name__ == "CEWithChunkedOutputLoss":
            # set num_output_chunks for model
            self._model.set_num_output_chunks(self._loss_fn.num_output_chunks)

        log.info("Loss is initialized.")

        # Dataloaders depend on the tokenizer and loss_fn and should be
        # setup after all of these are setup
        collate_name = cfg.get("collate_fn", "torchtune.data.padded_collate_sft")
        self._dataloader = self._setup_data(
            cfg_dataset=cfg.dataset,
            shuffle=cfg.shuffle,
            batch_size=cfg.batch_size,
            collate_fn=collate_name,
            dataloader_state_dict=(
                recipe_state.get(training.DATALOADER_KEY) if recipe_state else None
            ),
        )
        self._val_dataloader = None
        if cfg.get("dataset_val", None) is not None:
            self._val_dataloader = self._setup_data(
                cfg_dataset=cfg.dataset_val,
                shuffle=False,
                batch_size=cfg.get("batch_size_val", cfg.batch_size),
                collate_fn=collate_name,
            )

        # Number of optimizer steps in each epoch: the dataloader's batches, grouped by
        # gradient accumulation, capped by max_steps_per_epoch.
        self._steps_per_epoch = (
            len(self._dataloader) // self._gradient_accumulation_steps
        )
        if self._steps_per_epoch == 0:
            raise ValueError(
                f"the dataset gives {len(self._dataloader)} batches of batch_size={cfg.batch_size}, "
                f"fewer than gradient_accumulation_steps={self._gradient_accumulation_steps}: no optimizer step "
                "would run. Use a smaller batch_size or gradient_accumulation_steps."
            )
        if (
            self.max_steps_per_epoch is not None
            and self.max_steps_per_epoch < self._steps_per_epoch
        ):
            self._steps_per_epoch = self.max_steps_per_epoch
        if not self._resume_from_checkpoint:
            self.global_step = self.epochs_run * self._steps_per_epoch

        # Learning rate scheduler can only be set up after number of steps
        # has been computed
        self._lr_scheduler = self._setup_lr_scheduler(
            cfg_lr_scheduler=cfg.get("lr_scheduler", None),
            num_training_steps=self.total_epochs * self._steps_per_epoch,
            last_epoch=self.global_step - 1,
        )

        # Set up profiler, returns DummyProfiler (nullcontext object with no-op `step` method)
        # if cfg is missing profiler key or if `cfg.profiler.enabled = False
        self._profiler = self._setup_profiler(cfg.get(PROFILER_KEY, None))

        # The metric logger (logs/, torchtune_config.yaml) last: a start that fails above
        # leaves an earlier run's files in output_dir untouched.
        self._metric_logger = config.instantiate(cfg.metric_logger)
        self._metric_logger.log_config(cfg)

        # Restore the random state last, so nothing done during setup consumes it.
        if recipe_state is not None:
            genft_training.set_rng_state(recipe_state[training.RNG_KEY])

    def _setup_profiler(
        self, cfg_profiler: Optional[DictConfig] = None
    ) -> Union[torch.profiler.profile, DummyProfiler]:
        """
        Parses the `profiler` section of top-level `cfg` and sets up profiler

        Args:
            cfg_profiler (Optional[DictConfig]): ``profiler`` section of the top-level ``cfg`` (the main config passed to
                `recipe.main`). Default None.

        Returns:
            profiler: Union[torch.profiler.profile, DummyProfiler] - DummyProfiler is a nullcontext with no-op methods
            for `start`, `stop`, and `step` that can be used in place of `torch.profiler.profile` if profiler is not enabled such
            that the instrumented training loop does not need to be changed profiling is disabled.

        The profiler config can be provided in configs under the `profiler` key with the following layout:

        .. code-block:: yaml
            profiler:
                enabled: bool

                #Output directory of trace artifacts
                output_dir: str

            #`torch.profiler.ProfilerActivity` types to trace
            cpu: bool
            cuda: bool

                #Trace options
                profile_memory: bool
                with_stack: bool
                record_shapes: bool
                with_flops: bool

            # `torch.profiler.schedule` options:
            # wait_steps -> wait, warmup_steps -> warmup, active_steps -> active, num_cycles -> repeat
            wait_steps: int
            warmup_steps: int
            active_steps: int
            num_cycles: int
        """

        # Missing profiler section in config, assume disabled
        if cfg_profiler is None:
            cfg_profiler = DictConfig({"enabled": False})

        # Check that component is included and set correctly
        if cfg_profiler.get("_component_", None) is None:
            cfg_profiler["_component_"] = "torchtune.training.setup_torch_profiler"
        elif cfg_profiler.get("_component_") != "torchtune.training.setup_torch_profiler":
            raise ValueError(
                "Only torch profiler supported currently: profiler._component_ must be "
                "`torchtune.training.setup_torch_profiler`"
            )

        profiler, profiler_cfg = config.instantiate(cfg_profiler)

        log.info(f" Profiler config after instantiation: {profiler_cfg}")

        self.profiler_profile_memory = profiler_cfg.get("profile_memory", False)
        if profiler_cfg["enabled"]:
            self.profiler_wait_steps = profiler_cfg["wait_steps"]
            self.profiler_warmup_steps = profiler_cfg["warmup_steps"]
            self.profiler_active_steps = profiler_cfg["active_steps"]

        return profiler

    def _setup_model(
        self,
        cfg_model: DictConfig,
        enable_activation_checkpointing: bool,
        enable_activation_offloading: bool,
        compile_model: bool,
        base_model_state_dict: Dict[str, Any],
        adapter_state_dict: Optional[Dict[str, Any]] = None,
    ) -> nn.Module:
        with training.set_default_dtype(self._dtype), self._device:
            model = config.instantiate(cfg_model)

        # GenFT or WeGeFT: targets named as in the state dict, taken before any wrapping.
        self._adapter = genft_training.get_model_adapter(model)
        self._adapter.check_targets(cfg_model, model)
        if adapter_state_dict is not None:
            self._adapter.check_resume_config(getattr(self, "_resume_adapter_config", None))
        else:
            # A fresh adapter that depends on the seed alone (not on the device, dtype or
            # world size): the distributed recipe starts from the same one.
            adapter_state_dict = self._adapter.init_state_dict(model, seed=self.seed)

        self.adapter_params = get_adapter_params(model)
        set_trainable_params(model, self.adapter_params)
        num_trainable = sum(p.numel() for p in self.adapter_params.values())
        log.info(
            f"{self._adapter.label} adapter: {len(self._adapter.target_modules)} layers, "
            f"{num_trainable:,} trainable parameters ({self._adapter.config})."
        )

        if self._enable_fp8_training:
            converted = genft_training.convert_frozen_linears_to_float8(
                model, recipe_name=self._fp8_recipe_name
            )
            log.info(f"float8 training of {len(converted)} frozen base linear layers.")

        if compile_model:
            if self._enable_fp8_training:
                # float8 kernels need dimensions provably divisible by 16: compile each
                # (padded) sequence length statically instead of one dynamic graph
                torch._dynamo.config.automatic_dynamic_shapes = False
            training.compile_model(model)

        if enable_activation_checkpointing:
            training.set_activation_checkpointing(
                model, auto_wrap_policy={modules.TransformerSelfAttentionLayer}
            )

        base_missing, base_unexpected = model.load_state_dict(
            base_model_state_dict, strict=False
        )
        self._adapter.validate_loaded_keys(
            missing_keys=base_missing,
            unexpected_keys=base_unexpected,
            base_loaded=True,
            adapter_loaded=False,
        )
        adapter_missing, adapter_unexpected = model.load_state_dict(
            adapter_state_dict, strict=False
        )
        self._adapter.validate_loaded_keys(
            missing_keys=adapter_missing,
            unexpected_keys=adapter_unexpected,
            base_loaded=False,
            adapter_loaded=True,
        )
        # Validate model adapter params were loaded in with the expected dtype
        training.validate_expected_param_dtype(
            self.adapter_params.items(), dtype=self._dtype
        )

        # activation offloading
        self.activations_handling_ctx = training.get_act_offloading_ctx_manager(
            model, enable_activation_offloading
        )

        log.info(f"Model is initialized with precision {self._dtype}.")

        if self._device.type != "cpu":
            memory_stats = training.get_memory_stats(device=self._device)
            training.log_memory_stats(memory_stats)
        return model

    def _setup_optimizer(
        self, cfg_optimizer: DictConfig, opt_state_dict: Optional[Dict[str, Any]] = None
    ) -> Optimizer:
        optimizer = config.instantiate(cfg_optimizer, self._model.parameters())
        if opt_state_dict:
            optimizer.load_state_dict(opt_state_dict)

        log.info("Optimizer and loss are initialized.")
        return optimizer

    def _setup_lr_scheduler(
        self,
        cfg_lr_scheduler: Optional[DictConfig],
        num_training_steps: int,
        last_epoch: int,
    ) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
        if cfg_lr_scheduler is None:
            log.info("No learning rate scheduler configured: the learning rate stays constant.")
            return None
        lr_scheduler = config.instantiate(
            cfg_lr_scheduler,
            self._optimizer,
            num_training_steps=num_training_steps,
            last_epoch=last_epoch,
        )

        log.info("Learning rate scheduler is initialized.")
        return lr_scheduler

    def _setup_data(
        self,
        cfg_dataset: DictConfig,
        shuffle: bool,
        batch_size: int,
        collate_fn: str,
        dataloader_state_dict: Optional[Dict[str, Any]] = None,
    ) -> StatefulDataLoader:
        """
        All data related setup happens here. This recipe currently supports only
        map-style datasets. If a state_dict is provided (meaning we are resuming a training run
        mid-epoch), it is loaded into the dataloader so that iteration continues where it stopped.
        """
        if isinstance(cfg_dataset, ListConfig):
            datasets = [
                self._checked(config.instantiate(single_cfg_dataset, self._tokenizer), single_cfg_dataset)
                for single_cfg_dataset in cfg_dataset
            ]
            ds = ConcatDataset(datasets=datasets)
            packed = getattr(ds, "packed", False)
        else:
            ds = self._checked(config.instantiate(cfg_dataset, self._tokenizer), cfg_dataset)
            packed = cfg_dataset.get("packed", False)

        # Instantiate collate_fn
        if "left_pad_sequence" in collate_fn:
            raise RuntimeError("left_pad_sequence collator is only for inference.")
        collate_fn = _get_component_from_path(collate_fn)

        sampler = StatefulDistributedSampler(
            ds,
            num_replicas=1,
            rank=0,
            shuffle=shuffle,
            seed=0,
        )
        collate = genft_training.sft_collate(
            collate_fn,
            packed=packed,
            tokenizer=self._tokenizer,
            ignore_index=self._loss_fn.ignore_index,
            fp8=self._enable_fp8_training,
        )
        if not packed:  # rows that fail or lose every label to truncation are skipped
            collate = genft_training.skip_none_collate(
                collate, pad_id=self._tokenizer.pad_id, ignore_index=self._loss_fn.ignore_index
            )

        dataloader = StatefulDataLoader(
            dataset=ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            # dropping last avoids shape issues with compile + flex attention
            drop_last=True,
            # its own generator: creating an iterator must not draw from the global RNG,
            # or a resumed run's random stream would differ from the uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
        )
        if dataloader_state_dict is not None:
            dataloader.load_state_dict(dataloader_state_dict)

        return dataloader

    def _checked(self, ds: Any, cfg_dataset: DictConfig) -> Any:
        """``ds`` with its failing and fully truncated rows skipped and counted (packed
        data sets were tokenized whole when built: left as they are)."""
        if getattr(ds, "packed", False) or cfg_dataset.get("packed", False):
            return ds
        ds = genft_training.CheckedRows(
            ds,
            label=genft_training.dataset_label(cfg_dataset, "dataset"),
            ignore_index=self._loss_fn.ignore_index,
        )
        self._checked_datasets.append(ds)
        return ds

    def save_checkpoint(self, *, epoch: int, end_of_epoch: bool) -> None:
        """
        Save the GenFT adapter and the recipe state; after the last epoch, also the
        merged model through the torchtune checkpointer.

        - Mid-epoch (every ``save_every_n_steps``): adapter in ``output_dir/step_{N}``;
          the recipe state records the dataloader position.
        - Epoch end: adapter in ``output_dir/epoch_{E}``.
        - After the last epoch (unless ``save_adapter_weights_only``): the merged weights
          ``W0 + dW`` in the base checkpoint's format, in ``output_dir/epoch_{E}``.

        The recipe state is written last, atomically, so it always names a complete adapter.
        """
        start = time.perf_counter()
        done = end_of_epoch and self.epochs_run >= self.total_epochs
        name = f"epoch_{epoch}" if end_of_epoch else f"step_{self.global_step}"
        adapter_dir = self._output_dir / name

        state_dict = self._model.state_dict()
        genft_training.save_adapter_files(
            adapter_dir,
            adapter=self._adapter,
            adapter_state_dict=self._adapter.adapter_state_dict(state_dict),
            base_dir=genft_training.checkpoint_dir_of(self._checkpointer),
        )

        if done and not self._save_adapter_weights_only:
            cpu_state_dict = genft_training.dequantize_state_dict(
                {k: v.detach().cpu() for k, v in state_dict.items()}
            )
            merged_state_dict = self._adapter.merge_state_dict(cpu_state_dict)
            del cpu_state_dict
            self._checkpointer.save_checkpoint(
                {training.MODEL_KEY: merged_state_dict},
                epoch=epoch,
                intermediate_checkpoint=False,
            )
            # its own card and config.json dtype, open() modes (torchtune copies the base's files, 0600)
            finalize_merged_folder(
                self._output_dir / f"epoch_{epoch}", base_dir=genft_training.checkpoint_dir_of(self._checkpointer)
            )
        del state_dict

        recipe_state = genft_training.recipe_state_dict(
            self,
            optimizer_state=self._optimizer.state_dict(),
            rng_state=genft_training.get_rng_state(),
            adapter_dir_name=name,
            world_size=1,
            dataloader_state=None if end_of_epoch else self._dataloader.state_dict(),
        )
        path = genft_training.save_recipe_state(self._output_dir, recipe_state)
        self._last_checkpoint = name
        log.info(
            f"Saved the {self._adapter.label} adapter to {adapter_dir} and the recipe state to {path} "
            f"in {time.perf_counter() - start:.2f} s."
        )

    def _loss_step(self, batch: Dict[str, torch.Tensor], offload: bool = True) -> torch.Tensor:
        # Shape [b, s], needed for the loss not the model
        labels = batch.pop("labels")
        # run model
        if offload:
            with self.activations_handling_ctx:
                logits = self._model(**batch)
        else:
            logits = self._model(**batch)

        # Shift labels to compute loss: labels[..., 1:] padded with an ignored position,
        # so the logits need no slicing.
        labels = F.pad(labels[..., 1:], (0, 1), value=self._loss_fn.ignore_index)
        if not isinstance(logits, list):
            labels = labels.reshape(-1)
            logits = logits.reshape(-1, logits.size(-1))

        # a batch whose examples were all skipped has no label: 0, not 0 / 0
        loss = genft_training.loss_or_zero(
            self._loss_fn, logits, labels, self._loss_fn.ignore_index
        )

        # free logits otherwise it peaks backward memory
        del logits

        return loss

    def validate(self) -> Optional[float]:
        """Token-normalised loss over ``dataset_val`` (at most ``max_validation_steps``
        batches); logged as ``val_loss``. Returns None without ``dataset_val``."""
        if self._val_dataloader is None:
            return None
        val_loss = genft_training.validation_loss(
            model=self._model,
            adapter=self._adapter,
            batches=self._val_dataloader,
            loss_step=lambda batch: self._loss_step(batch, offload=False),
            ignore_index=self._loss_fn.ignore_index,
            device=self._device,
            max_steps=self._max_validation_steps,
            all_reduce=False,
        )
        self._metric_logger.log_dict({"val_loss": val_loss}, step=self.global_step)
        log.info(f"Step {self.global_step}: validation loss {val_loss:.6f}")
        return val_loss

    def train(self) -> None:
        """
        The core training loop.
        """

        if self._compile:
            log.info(
                "NOTE: torch.compile is enabled and model is compiled in first forward. Expect a relatively slow first iteration."
            )

        # Initialize tokens count and running loss (for grad accumulation)
        t0 = time.perf_counter()
        running_loss = 0
        num_tokens = 0

        with self._profiler as prof:
            # self.epochs_run should be non-zero when we're resuming from a checkpoint
            for curr_epoch in range(self.epochs_run, self.total_epochs):
                pbar = tqdm(total=self._steps_per_epoch, initial=self._steps_in_epoch)
                self._dataloader.sampler.set_epoch(curr_epoch)
                micro_step = 0  # micro-batches accumulated since the last optimizer step
                for idx, batch in enumerate(self._dataloader):
                    if self._steps_in_epoch >= self._steps_per_epoch:
                        break
                    # Start tracking CUDA memory for active steps for just the first epoch
                    if (
                        curr_epoch == 0
                        and self.profiler_profile_memory
                        and idx == self.profiler_wait_steps + self.profiler_warmup_steps
                        and self._device.type == "cuda"
                    ):
                        torch.cuda.memory._record_memory_history()

                    utils.batch_to_device(batch, self._device)

                    # Calculate the number of unmasked tokens in the current batch
                    # and increment the total number of tokens seen in the step
                    current_num_tokens = (
                        batch["labels"] != self._loss_fn.ignore_index
                    ).sum()
                    num_tokens += current_num_tokens

                    # Loss is normalized by default so we multiply by the number of tokens
                    # This way we can normalize by the total number of tokens if we're accumulating gradients
                    current_loss = self._loss_step(batch) * current_num_tokens
                    running_loss += current_loss.detach()
                    current_loss.backward()
                    micro_step += 1

                    # Step with optimizer
                    if micro_step == self._gradient_accumulation_steps:
                        micro_step = 0
                        # clamp: an accumulated step of skipped rows has no token
                        training.scale_grads(self._model, 1 / num_tokens.clamp(min=1))
                        if self._clip_grad_norm is not None:
                            grad_norm = torch.nn.utils.clip_grad_norm_(
                                self._model.parameters(),
                                max_norm=float(self._clip_grad_norm),
                            )
                        self._optimizer.step()
                        self._optimizer.zero_grad(set_to_none=True)
                        if self._lr_scheduler is not None:
                            self._lr_scheduler.step()
                        # Update the number of steps when the weights are updated
                        self.global_step += 1
                        self._steps_in_epoch += 1

                        loss_to_log = running_loss.item() / max(num_tokens.item(), 1)
                        pbar.update(1)
                        pbar.set_description(
                            f"{curr_epoch + 1}|{self.global_step}|Loss: {loss_to_log}"
                        )

                        # Log per-step metrics
                        if self.global_step % self._log_every_n_steps == 0:
                            time_per_step = time.perf_counter() - t0
                            log_dict = {
                                "loss": loss_to_log,
                                "lr": float(self._optimizer.param_groups[0]["lr"]),
                                "tokens_per_second_per_gpu": num_tokens.item() / time_per_step,
                            }
                            if self._log_peak_memory_stats:
                                log_dict.update(
                                    training.get_memory_stats(device=self._device)
                                )
                            if self._clip_grad_norm is not None:
                                log_dict.update({"grad_norm": float(grad_norm)})
                            self._metric_logger.log_dict(
                                log_dict,
                                step=self.global_step,
                            )

                        # Reset running stats for the next step
                        running_loss = 0
                        num_tokens = 0

                        epoch_done = self._steps_in_epoch >= self._steps_per_epoch
                        if (
                            self._run_val_every_n_steps is not None
                            and self.global_step % self._run_val_every_n_steps == 0
                            and not epoch_done  # the epoch-end validation follows
                        ):
                            self.validate()
                        if (
                            self._save_every_n_steps is not None
                            and self.global_step % self._save_every_n_steps == 0
                            and not epoch_done  # the epoch-end checkpoint follows
                        ):
                            with genft_training.deferred_interrupt():
                                self.save_checkpoint(epoch=curr_epoch, end_of_epoch=False)
                        t0 = time.perf_counter()

                        # Step the profiler once per optimizer step (as the distributed
                        # recipe does): a profiled step holds all its micro-batches
                        prof.step()

                    # Stop tracking CUDA memory now that active steps are complete
                    if (
                        curr_epoch == 0
                        and self.profiler_profile_memory
                        and idx
                        == self.profiler_wait_steps
                        + self.profiler_warmup_steps
                        + self.profiler_active_steps
                        and self._device.type == "cuda"
                    ):
                        torch.cuda.memory._record_memory_history(enabled=None)

                    if self._steps_in_epoch >= self._steps_per_epoch:
                        break

                pbar.close()
                for line in genft_training.data_reports(self._checked_datasets):
                    log.warning(line)
                self.epochs_run += 1
                self._steps_in_epoch = 0
                self.validate()
                start_save_checkpoint = time.perf_counter()
                log.info("Starting checkpoint save...")
                with genft_training.deferred_interrupt():  # no half-written epoch_N on Ctrl-C
                    self.save_checkpoint(epoch=curr_epoch, end_of_epoch=True)
                log.info(
                    "Checkpoint saved in {:.2f} seconds.".format(
                        time.perf_counter() - start_save_checkpoint
                    )
                )

    def cleanup(self) -> None:
        self._metric_logger.close()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """
    Entry point for the recipe.

    Configurable parameters are read in the following order:
        - Parameters specified in config (see available configs through ``genft-tune ls``)
        - Overwritten by arguments from the command-line
    """
    prog = "genft_finetune_single_device"
    # a user's mistake (config, checkpoint, data): one clear message before anything is
    # loaded or written
    with genft_training.user_errors(prog):
        genft_training.preflight(cfg)
    config.log_config(recipe_name="GenFTFinetuneRecipeSingleDevice", cfg=cfg)
    recipe = GenFTFinetuneRecipeSingleDevice(cfg=cfg)
    started = False
    try:
        recipe.setup(cfg=cfg)
        started = True
        recipe.train()
    except KeyboardInterrupt:
        print(
            genft_training.interrupted_message(
                prog, step=recipe.global_step if started else None, last_checkpoint=recipe._last_checkpoint
            ),
            file=sys.stderr,
        )
        if started:
            recipe.cleanup()
        raise SystemExit(genft_training.EXIT_INTERRUPTED) from None
    recipe.cleanup()


if __name__ == "__main__":
    resolve_config_argv(sys.argv)
    sys.exit(recipe_main())
