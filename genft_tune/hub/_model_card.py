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
TAGS = ["genft", "peft", "torchtune"]

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


def build_model_card(
    folder: PathLike,
    *,
    repo_id: str,
    license: Optional[str] = None,
    loss_curve: Optional[str] = None,
) -> str:
    """The ``README.md`` text for a merged GenFT model folder.

    Args:
        folder (PathLike): the folder to publish.
        repo_id (str): its Hub id, for the title and the usage snippet.
        license (Optional[str]): overrides the license of the base's card.
        loss_curve (Optional[str]): file name of a loss-curve image in the folder.

    Returns:
        str: YAML front matter (``base_model``, ``library_name``, ``tags``,
        ``license``) and a Markdown body.
    """
    folder = Path(folder)
    genft = json.loads((folder / GENFT_CONFIG_FILE).read_text()) if (folder / GENFT_CONFIG_FILE).is_file() else {}
    base_card = front_matter((folder / CARD_FILE).read_text()) if (folder / CARD_FILE).is_file() else {}
    hf_format = (folder / "config.json").is_file()
    base_model = genft.get("base_model")
    if base_model and not HUB_ID.match(str(base_model)):
        base_model = base_card.get("base_model") if isinstance(base_card.get("base_model"), str) else None
    license = license or base_card.get("license")

    meta: Dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
    meta["library_name"] = "transformers" if hf_format else "torchtune"
    meta["tags"] = list(TAGS) + [t for t in (base_card.get("tags") or []) if t not in TAGS and isinstance(t, str)]
    if license:
        meta["license"] = license
    if hf_format:
        meta["pipeline_tag"] = (
            "image-classification"
            if json.loads((folder / "config.json").read_text()).get("model_type") == "vit"
            else "text-generation"
        )

    kind = get_adapter_kind(genft.get("method", "genft"))
    lines = [f"# {repo_id.split('/')[-1]}", ""]
    what = kind.description
    base_txt = f" of [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
    lines += [
        f"A fine-tuned version{base_txt}, trained with {what} using "
        "[torchtune](https://github.com/pytorch/torchtune) and `genft_tune`. The adapter "
        "(`W = W0 + dW`) is merged into the weights: the model loads like its base, "
        "with no extra dependency.",
        "",
    ]
    if hf_format:
        cls = "AutoModelForImageClassification" if meta.get("pipeline_tag") == "image-classification" else "AutoModelForCausalLM"
        lines += ["## Usage", "", "```python", f"from transformers import {cls}", "", f'model = {cls}.from_pretrained("{repo_id}")', "```", ""]
    if genft:
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
    log_path = folder / TRAINING_LOG_FILE
    if log_path.is_file():
        metrics = parse_metric_log(log_path)
        if metrics:
            lines += ["## Final metrics", "", "| metric | step | value |", "|---|---|---|"]
            for name, points in sorted(metrics.items()):
                step, value = points[-1]
                lines.append(f"| {name} | {step} | {value:.6g} |")
            lines.append("")
    if loss_curve:
        lines += ["## Training loss", "", f"![training loss]({loss_curve})", ""]
    cfg_path = folder / TRAINING_CONFIG_FILE
    if cfg_path.is_file():
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
    front = yaml.safe_dump(meta, sort_keys=False).rstrip()
    return f"---\n{front}\n---\n\n" + "\n".join(lines).rstrip() + "\n"


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


__all__ = ["build_model_card", "loss_curves", "moving_average", "parse_metric_log", "plot_loss_curve"]
