"""Model card (``README.md``) and loss curve for a merged GenFT model folder.

Reads what :func:`genft_tune.checkpointing.merge_adapter_checkpoint` leaves in the
folder: ``genft_config.json`` (hyperparameters, targets, base model),
``torchtune_config.yaml`` (training config) and ``training_log.txt`` (torchtune's
``DiskLogger`` lines ``Step N | loss:2.31 lr:0.0002 ...``), each optional, plus the
base's own ``README.md`` (its ``license``) and ``config.json``.
"""

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from genft_tune._fs import temp_file
from genft_tune.hub._base import front_matter, HUB_ID
from genft_tune.modules import get_adapter_kind

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CARD_FILE = "README.md"
LOSS_CURVE_FILE = "loss_curve.png"
TRAINING_CONFIG_FILE = "torchtune_config.yaml"
TRAINING_LOG_FILE = "training_log.txt"
GENFT_CONFIG_FILE = "genft_config.json"
TAGS = ["peft", "torchtune"]  # after the method's own tag (genft, wegeft)

_LOG_LINE = re.compile(r"^Step (\d+) \| (.*)$")


def parse_metric_log(path: PathLike) -> Dict[str, List[Tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from a torchtune ``DiskLogger`` file."""
    metrics: Dict[str, List[Tuple[int, float]]] = {}
    for line in Path(path).read_text().splitlines():
        m = _LOG_LINE.match(line.strip())
        if not m:
            continue
        step = int(m.group(1))
        for item in m.group(2).split():
            name, sep, value = item.partition(":")
            if not sep:
                continue
            try:
                metrics.setdefault(name, []).append((step, float(value)))
            except ValueError:
                continue
    return metrics


Series = Union[Dict[int, float], List[Tuple[int, float]]]


def moving_average(values: List[float], window: int) -> List[float]:
    """Trailing mean over at most ``window`` values (shorter at the start), same length."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curves(metrics: Dict[str, Series]) -> Dict[str, Tuple[List[int], List[float]]]:
    """What :func:`plot_loss_curve` draws: the raw training ``loss``, its moving average
    (window: a tenth of the run, at least 5 steps; the raw per-step line is noisy) and
    ``val_loss``, each as ``(steps, values)``."""
    curves = {}
    for name in ("loss", "val_loss"):
        series = metrics.get(name)
        if not series:
            continue
        points = sorted(series.items()) if isinstance(series, dict) else sorted(series)
        steps, values = [int(s) for s, _ in points], [float(v) for _, v in points]
        curves[name] = (steps, values)
        if name == "loss" and len(values) >= 10:
            window = max(5, len(values) // 10)
            curves[f"loss (moving average of {window})"] = (steps, moving_average(values, window))
    return curves


def plot_loss_curve(metrics: Dict[str, Series], path: PathLike, *, title: Optional[str] = None) -> Optional[Path]:
    """Plot the training loss, raw and smoothed, and ``val_loss`` against the step into
    ``path`` (a temporary name, then renamed); ``None`` when there is no loss or
    matplotlib is not installed."""
    curves = loss_curves(metrics)
    if not curves:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no loss curve")
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, (steps, values) in curves.items():
        if name == "loss":
            ax.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=1, label="loss (per step)")
        elif name.startswith("loss"):
            ax.plot(steps, values, color="tab:blue", linewidth=2, label=name)
        else:
            ax.plot(steps, values, "o-", color="tab:orange", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".png")
    os.close(fd)
    try:
        fig.savefig(tmp, metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def find_run_files(folder: PathLike) -> Dict[str, Path]:
    """The training run's files for ``folder`` (a merged model or adapter checkpoint):
    ``{TRAINING_CONFIG_FILE: path, TRAINING_LOG_FILE: path}``, each where found, in the
    folder itself or its parent (a recipe's ``output_dir``, whose ``epoch_N``/``step_N``
    the folder is: the config there, the newest metric log under ``logs/``)."""
    folder = Path(folder)
    found: Dict[str, Path] = {}
    for parent in (folder, folder.parent):
        if TRAINING_CONFIG_FILE not in found and (parent / TRAINING_CONFIG_FILE).is_file():
            found[TRAINING_CONFIG_FILE] = parent / TRAINING_CONFIG_FILE
        if TRAINING_LOG_FILE not in found:
            if (parent / TRAINING_LOG_FILE).is_file():
                found[TRAINING_LOG_FILE] = parent / TRAINING_LOG_FILE
            elif (parent / "logs").is_dir() and (logs := sorted((parent / "logs").glob("*.txt"), key=os.path.getmtime)):
                found[TRAINING_LOG_FILE] = logs[-1]
    return found


class BaseModelUnknown(ValueError):
    """The card needs the base's Hub id, and nothing the folder holds says it."""


def _hub_id(value: Any) -> Optional[str]:
    """``value`` when it is a Hub id (``ORG/NAME``, not an existing local path)."""
    return str(value) if value and HUB_ID.match(str(value)) and not Path(str(value)).exists() else None


def _base_model(
    genft: Dict[str, Any], base_card: Dict[str, Any], override: Optional[str], *also: Optional[str]
) -> Optional[str]:
    """The base's Hub id: ``override``, else the adapter's recorded ``base_model`` when it
    is a Hub id, else the base card's own ``base_model``, else the first Hub id among
    ``also``. A base recorded only as a local path is an error (the card would name no
    base): pass ``--base-model``."""
    if override:
        if not HUB_ID.match(override):
            raise ValueError(f"--base-model must be a Hub id like ORG/NAME, got {override!r}")
        return override
    recorded = genft.get("base_model")
    from_card = base_card.get("base_model")
    for candidate in (recorded, from_card if isinstance(from_card, str) else None, *also):
        if _hub_id(candidate):
            return _hub_id(candidate)
    if recorded or any(also):
        where = recorded or next(a for a in also if a)
        raise BaseModelUnknown(
            f"the base model is recorded as {where!r}, not a Hub id, and its card names none: "
            "pass --base-model ORG/NAME (the Hub id of the base it was trained on)"
        )
    return None


def _sections(genft: Dict[str, Any], run_files: Dict[str, Path], loss_curve: Optional[str]) -> List[str]:
    """The card's body after its usage: hyperparameters, final metrics, loss curve and
    training configuration (each when known)."""
    lines: List[str] = []
    if genft:
        kind = get_adapter_kind(genft.get("method", "genft"))
        cfg = genft.get(f"{kind.name}_config", {})
        lines += [f"## {kind.label} hyperparameters", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in cfg.items()]
        targets = genft.get("target_modules", [])
        suffixes = sorted({t.rsplit(".", 1)[-1] for t in targets})
        n_params = sum(_numel(s) for s in genft.get("tensor_shapes", {}).values())
        lines += [
            f"| target modules | {len(targets)} ({', '.join(suffixes)}) |",
            f"| adapter parameters | {n_params:,} |",
            f"| genft_tune version | {genft.get('genft_tune_version', 'unknown')} |",
            "",
        ]
    log_path = run_files.get(TRAINING_LOG_FILE)
    if log_path is not None:
        metrics = parse_metric_log(log_path)
        if metrics:
            lines += ["## Final metrics", "", "| metric | step | value |", "|---|---|---|"]
            for name, points in sorted(metrics.items()):
                step, value = points[-1]
                lines.append(f"| {name} | {step} | {value:.6g} |")
            lines.append("")
    if loss_curve:
        lines += ["## Training loss", "", f"![training loss]({loss_curve})", ""]
    cfg_path = run_files.get(TRAINING_CONFIG_FILE)
    if cfg_path is not None:
        lines += [
            "## Training configuration",
            "",
            "<details><summary>torchtune config</summary>",
            "",
            "```yaml",
            cfg_path.read_text().rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


def _card(meta: Dict[str, Any], lines: List[str]) -> str:
    front = yaml.safe_dump(meta, sort_keys=False).rstrip()
    return f"---\n{front}\n---\n\n" + "\n".join(lines).rstrip() + "\n"


def _tags(method: str, base_card: Dict[str, Any]) -> List[str]:
    own = [method] + TAGS
    return own + [t for t in (base_card.get("tags") or []) if t not in own and isinstance(t, str)]


def _quantized_base_note(base_card: Dict[str, Any], base_model: Optional[str]) -> List[str]:
    if base_card.get("base_model_relation") != "quantized" or not base_model:
        return []
    return [
        f"Trained on a quantized copy of [{base_model}](https://huggingface.co/{base_model}) "
        "(its weights dequantized): on the original weights the fine-tune behaves closely, "
        "not identically.",
        "",
    ]


def build_model_card(
    folder: PathLike,
    *,
    repo_id: str,
    license: Optional[str] = None,
    loss_curve: Optional[str] = None,
    base_model: Optional[str] = None,
    run_files: Optional[Dict[str, Path]] = None,
) -> str:
    """The ``README.md`` text for a merged GenFT model folder.

    Args:
        folder (PathLike): the folder to publish.
        repo_id (str): its Hub id, for the title and the usage snippet.
        license (Optional[str]): overrides the license of the base's card.
        loss_curve (Optional[str]): file name of a loss-curve image in the folder.
        base_model (Optional[str]): the base's Hub id, overriding what the folder records.
        run_files (Optional[Dict[str, Path]]): the run's config and metric log
            (default: :func:`find_run_files`).

    Returns:
        str: YAML front matter (``base_model``, ``library_name``, ``tags``,
        ``license``, ``pipeline_tag``) and a Markdown body.

    Raises:
        BaseModelUnknown: when the base is recorded only as a local path.
    """
    folder = Path(folder)
    genft = json.loads((folder / GENFT_CONFIG_FILE).read_text()) if (folder / GENFT_CONFIG_FILE).is_file() else {}
    base_card = front_matter((folder / CARD_FILE).read_text()) if (folder / CARD_FILE).is_file() else {}
    hf_format = (folder / "config.json").is_file()
    base_model = _base_model(genft, base_card, base_model)
    license = license or base_card.get("license")
    kind = get_adapter_kind(genft.get("method", "genft"))

    meta: Dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
    meta["library_name"] = "transformers" if hf_format else "torchtune"
    meta["tags"] = _tags(kind.name, base_card)
    if license:
        meta["license"] = license
    if hf_format:
        meta["pipeline_tag"] = (
            "image-classification"
            if json.loads((folder / "config.json").read_text()).get("model_type") == "vit"
            else "text-generation"
        )

    lines = [f"# {repo_id.split('/')[-1]}", ""]
    base_txt = f" of [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
    lines += [
        f"A fine-tuned version{base_txt}, trained with {kind.description} using "
        "[torchtune](https://github.com/pytorch/torchtune) and `genft_tune`. The adapter "
        "(`W = W0 + dW`) is merged into the weights: the model loads like its base, "
        "with no extra dependency.",
        "",
    ]
    lines += _quantized_base_note(base_card, base_model)
    if hf_format:
        cls = "AutoModelForImageClassification" if meta.get("pipeline_tag") == "image-classification" else "AutoModelForCausalLM"
        lines += ["## Usage", "", "```python", f"from transformers import {cls}", "", f'model = {cls}.from_pretrained("{repo_id}")', "```", ""]
    lines += _sections(genft, find_run_files(folder) if run_files is None else run_files, loss_curve)
    return _card(meta, lines)


def _adapter_base_class(peft_config: Dict[str, Any], genft: Dict[str, Any], hf_config: Dict[str, Any]):
    """``(pipeline_tag, transformers class, from_pretrained keywords)`` the adapter's
    base loads with: a causal LM, or a ViT classifier with the trained head's classes
    (the base's own head, if any, is replaced: ``ignore_mismatched_sizes``)."""
    if peft_config.get("task_type") == "CAUSAL_LM":
        return "text-generation", "AutoModelForCausalLM", ""
    if hf_config.get("model_type") == "vit":
        head = (genft.get("tensor_shapes") or {}).get("head.weight")
        kwargs = f", num_labels={head[0]}, ignore_mismatched_sizes=True" if head else ""
        return "image-classification", "AutoModelForImageClassification", kwargs
    return None, "AutoModel", ""


def adapter_base_model(
    peft_config: Dict[str, Any],
    *,
    genft: Optional[Dict[str, Any]] = None,
    base_card: Optional[Dict[str, Any]] = None,
    override: Optional[str] = None,
) -> str:
    """The Hub id of a PEFT adapter's base (what its card and its published
    ``adapter_config.json`` name): ``override``, our json's, the base card's, or PEFT's
    ``base_model_name_or_path``.

    Raises:
        BaseModelUnknown: when none of them is a Hub id.
    """
    recorded = peft_config.get("base_model_name_or_path")
    base = _base_model(genft or {}, base_card or {}, override, recorded)
    if base is None:
        raise BaseModelUnknown("the adapter records no base model: pass --base-model ORG/NAME")
    return base


def build_adapter_card(
    peft_dir: PathLike,
    *,
    repo_id: str,
    genft: Optional[Dict[str, Any]] = None,
    base_card: Optional[Dict[str, Any]] = None,
    license: Optional[str] = None,
    base_model: Optional[str] = None,
    loss_curve: Optional[str] = None,
    run_files: Optional[Dict[str, Path]] = None,
    hf_config: Optional[Dict[str, Any]] = None,
) -> str:
    """The ``README.md`` text for a PEFT-format adapter (``publish --adapter-only``).

    Args:
        peft_dir (PathLike): holds ``adapter_config.json`` + ``adapter_model.safetensors``.
        repo_id (str): the adapter's Hub id, for the title and the usage snippet.
        genft (Optional[Dict[str, Any]]): our ``genft_config.json`` of the same adapter
            (hyperparameters table).
        base_card (Optional[Dict[str, Any]]): front matter of the base's own card.
        license (Optional[str]): overrides the base card's license.
        base_model (Optional[str]): the base's Hub id, overriding ``base_model_name_or_path``.
        loss_curve (Optional[str]): file name of a loss-curve image.
        run_files (Optional[Dict[str, Path]]): the run's config and metric log.
        hf_config (Optional[Dict[str, Any]]): the base's ``config.json`` (which model
            class the snippet loads).

    Returns:
        str: front matter (``base_model``, ``library_name: peft``, ``license``, ``tags``,
        ``pipeline_tag``) and a body whose usage snippet runs as printed.

    Raises:
        BaseModelUnknown: when the base's Hub id is unknown.
    """
    peft_config = json.loads((Path(peft_dir) / "adapter_config.json").read_text())
    genft, base_card = dict(genft or {}), dict(base_card or {})
    base_model = adapter_base_model(peft_config, genft=genft, base_card=base_card, override=base_model)
    method = str(peft_config.get("peft_type", "GENFT")).lower()
    kind = get_adapter_kind(method)
    pipeline_tag, cls, load_kwargs = _adapter_base_class(peft_config, genft, hf_config or {})
    meta: Dict[str, Any] = {"base_model": base_model, "library_name": "peft", "tags": _tags(kind.name, base_card)}
    license = license or base_card.get("license")
    if license:
        meta["license"] = license
    if pipeline_tag:
        meta["pipeline_tag"] = pipeline_tag
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A {kind.description} adapter for [{base_model}](https://huggingface.co/{base_model}), trained with "
        "[torchtune](https://github.com/pytorch/torchtune) and `genft_tune`, in Hugging Face "
        "PEFT's format. `genft_tune.peft` registers the method with PEFT (`pip install \"genft-tune[peft]\"`).",
        "",
    ]
    lines += _quantized_base_note(base_card, base_model)
    lines += [
        "## Usage",
        "",
        "```python",
        f"import genft_tune.peft  # registers {kind.label} with PEFT",
        "from peft import PeftModel",
        f"from transformers import {cls}",
        "",
        f'base = {cls}.from_pretrained("{base_model}"{load_kwargs})',
        f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        "merged = model.merge_and_unload()  # optional: a plain transformers model, W = W0 + dW",
        "```",
        "",
    ]
    lines += _sections(genft, run_files or {}, loss_curve)
    return _card(meta, lines)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


__all__ = [
    "adapter_base_model",
    "BaseModelUnknown",
    "build_adapter_card",
    "build_model_card",
    "find_run_files",
    "loss_curves",
    "moving_average",
    "parse_metric_log",
    "plot_loss_curve",
]
