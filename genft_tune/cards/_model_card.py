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
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml
from matplotlib.figure import Figure

from genft_tune._file_names import ADAPTER_CONFIG_FILE, PEFT_CONFIG_FILE
from genft_tune._fs import write_atomically, write_text_atomically
from genft_tune.cards._base import base_card as read_base_card, front_matter, HUB_ID
from genft_tune.models._families import find_family
from genft_tune.modules import get_adapter_kind
from genft_tune.modules._method import adapter_kind_for_peft_type, method_name_in_file

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CARD_FILE = "README.md"
LOSS_CURVE_FILE = "loss_curve.png"
TRAINING_CONFIG_FILE = "torchtune_config.yaml"
TRAINING_LOG_FILE = "training_log.txt"
TAGS = ["peft", "torchtune"]  # after the method's own tag (genft, wegeft)

_LOG_LINE = re.compile(r"^Step (\d+) \| (.*)$")
_TIMESTAMPED_LOG = re.compile(r"^log_(\d+)\.txt$")  # DiskLogger's default name


def _log_entries(text: str) -> List[Tuple[int, str]]:
    """``(step, line)`` of every ``Step N | ...`` line of a ``DiskLogger`` file."""
    out = []
    for line in text.splitlines():
        m = _LOG_LINE.match(line.strip())
        if m:
            out.append((int(m.group(1)), line.strip()))
    return out


def _names(line: str) -> set:
    return {item.partition(":")[0] for item in _LOG_LINE.match(line).group(2).split() if ":" in item}


def merge_metric_logs(paths: Sequence[PathLike]) -> str:
    """One metric log for a whole run from its ``DiskLogger`` files, oldest first.

    A run resumed after an interruption logs again from its last checkpoint's step, in a
    new file (each start of the recipe opens one, named by its start time) or appended to
    the same one (a fixed ``metric_logger.filename``). Where a new file starts, or where a
    file's step goes back or repeats a metric of the same step, the lines of that step and
    later ones logged before are dropped: the resumed steps replace the overlapped ones,
    and every step appears once (its training line, and its validation line when there is
    one: both carry the same step)."""
    kept: List[Tuple[int, str]] = []
    for path in paths:
        entries = _log_entries(Path(path).read_text(errors="replace"))
        if entries:  # a new start of the recipe
            kept = [(s, l) for s, l in kept if s < entries[0][0]]
        for step, line in entries:
            if kept and (step < kept[-1][0] or (
                step == kept[-1][0] and _names(line) & set().union(*(_names(l) for s, l in kept if s == step))
            )):
                kept = [(s, l) for s, l in kept if s < step]
            kept.append((step, line))
    return "".join(f"{line}\n" for _, line in kept)


def parse_metric_text(text: str) -> Dict[str, List[Tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from ``DiskLogger`` lines ``Step N | name:value ...``."""
    metrics: Dict[str, List[Tuple[int, float]]] = {}
    for step, line in _log_entries(text):
        for item in _LOG_LINE.match(line).group(2).split():
            name, sep, value = item.partition(":")
            if not sep:
                continue
            try:
                metrics.setdefault(name, []).append((step, float(value)))
            except ValueError:
                continue
    return metrics


def parse_metric_log(path: PathLike) -> Dict[str, List[Tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from a torchtune ``DiskLogger`` file."""
    return parse_metric_text(Path(path).read_text(errors="replace"))


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
    ``path`` (a temporary name, then renamed); ``None`` when there is no loss."""
    curves = loss_curves(metrics)
    if not curves:
        return None
    # a Figure of its own, not pyplot: no global backend or figure state is touched
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
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
    fmt = (path.suffix or ".png")[1:]  # the temporary name's suffix says no format
    write_atomically(path, lambda tmp: fig.savefig(tmp, format=fmt, metadata={"Software": None}))
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _log_order(path: Path) -> Tuple[float, str]:
    """Oldest first: ``log_<unix time>.txt`` by its time, other names by modification time."""
    m = _TIMESTAMPED_LOG.match(path.name)
    return (float(m.group(1)) if m else path.stat().st_mtime, path.name)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)), abs(float(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return str(a) == str(b)


def _config_contradiction(config_path: Path, adapter_meta: Dict[str, Any]) -> Optional[str]:
    """Why the run's ``torchtune_config.yaml`` does not belong to the adapter ``adapter_meta``
    (a later start in the same ``output_dir`` rewrote it), or None when it agrees with
    every hyperparameter the adapter recorded."""
    try:
        cfg = yaml.safe_load(config_path.read_text(errors="replace"))
    except yaml.YAMLError:
        return f"the run's {config_path} is not valid YAML"
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not adapter_meta or not isinstance(model, dict):
        return None
    try:
        kind = get_adapter_kind(method_name_in_file(adapter_meta))
    except ValueError:
        return None
    hyper = adapter_meta.get(f"{kind.name}_config") or {}
    for key, value in hyper.items():
        theirs = model.get(key)
        if key in model and not (isinstance(theirs, str) and "${" in theirs) and not _same_value(theirs, value):
            return (
                f"the run's {config_path} does not belong to this checkpoint (its model.{key} is {theirs!r}, "
                f"the adapter's {key} is {value!r}: a later start in the same output_dir rewrote it)"
            )
    return None


@dataclass
class RunFiles:
    """The training run's files for a checkpoint folder (:func:`find_run_files`).

    Attributes:
        config (Optional[Path]): the run's ``torchtune_config.yaml``, when it agrees with
            the checkpoint's adapter.
        logs (List[Path]): its ``DiskLogger`` metric logs, oldest first (a resumed run has
            several, or one appended to).
        config_problem (Optional[str]): why the run's config was found but not taken.
        searched (List[Path]): the folders searched for them.
    """

    config: Optional[Path] = None
    logs: List[Path] = field(default_factory=list)
    config_problem: Optional[str] = None
    searched: List[Path] = field(default_factory=list)

    def log_text(self) -> str:
        """The whole run's metric log (:func:`merge_metric_logs`)."""
        return merge_metric_logs(self.logs)

    def metrics(self) -> Dict[str, List[Tuple[int, float]]]:
        return parse_metric_text(self.log_text()) if self.logs else {}


def read_adapter_json(folder: PathLike) -> Dict[str, Any]:
    """The ``genft_config.json`` of a checkpoint folder (``{}`` when absent or unreadable)."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def find_run_files(folder: PathLike, adapter_meta: Optional[Dict[str, Any]] = None) -> RunFiles:
    """The training run's files for ``folder`` (a merged model or adapter checkpoint), in
    the folder itself or its parent (a recipe's ``output_dir``, whose ``epoch_N``/``step_N``
    the folder is): the config, and every metric log under ``logs/`` (a whole run across
    resumes). The config is left out (``config_problem`` says why) when it contradicts the
    hyperparameters of the checkpoint's own adapter (``adapter_meta``: its adapter json,
    default: the folder's ``genft_config.json``)."""
    folder = Path(folder)
    adapter_meta = read_adapter_json(folder) if adapter_meta is None else adapter_meta
    found = RunFiles(searched=[folder, folder.parent])
    for parent in (folder, folder.parent):
        if found.config is None and (parent / TRAINING_CONFIG_FILE).is_file():
            found.config = parent / TRAINING_CONFIG_FILE
        if not found.logs:
            if (parent / TRAINING_LOG_FILE).is_file():
                found.logs = [parent / TRAINING_LOG_FILE]
            elif (parent / "logs").is_dir():
                found.logs = sorted((p for p in (parent / "logs").glob("*.txt") if p.is_file()), key=_log_order)
    if found.config is not None:
        found.config_problem = _config_contradiction(found.config, adapter_meta)
        if found.config_problem:
            found.config = None
    return found


class BaseModelUnknown(ValueError):
    """The card needs the base's Hub id, and nothing the folder holds says it."""


def _hub_id(value: Any) -> Optional[str]:
    """``value`` when it is a Hub id (``ORG/NAME``, not an existing local path)."""
    return str(value) if value and HUB_ID.match(str(value)) and not Path(str(value)).exists() else None


def _base_model(
    adapter_meta: Dict[str, Any], base_card: Dict[str, Any], override: Optional[str], *also: Optional[str]
) -> Optional[str]:
    """The base's Hub id: ``override``, else the adapter's recorded ``base_model`` when it
    is a Hub id, else the base card's own ``base_model``, else the first Hub id among
    ``also``. A base recorded only as a local path is an error (the card would name no
    base): pass ``--base-model``."""
    if override:
        if not HUB_ID.match(override):
            raise ValueError(f"--base-model must be a Hub id like ORG/NAME, got {override!r}")
        return override
    recorded = adapter_meta.get("base_model")
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


# per-step metrics named for what they are on the card (DiskLogger's name says GPU on a CPU too)
_METRIC_NAMES = {"tokens_per_second_per_gpu": "tokens_per_second_per_device"}


def _metric_lines(run_files: RunFiles) -> List[str]:
    """The "Final metrics" section: each metric's last value (the learning rate's peak: its
    last value is the schedule's end, often 0), or a sentence saying why there are none."""
    lines = ["## Final metrics", ""]
    metrics = run_files.metrics()
    if not run_files.logs:
        where = " or ".join(str(p) for p in run_files.searched)
        return lines + [f"No metric log was found for this checkpoint ({TRAINING_LOG_FILE} or logs/*.txt "
                        f"in {where}): the card shows no metrics.", ""]
    if not metrics:
        names = ", ".join(p.name for p in run_files.logs)
        return lines + [f"The run's metric logs ({names}) hold no training steps: the card shows no metrics.", ""]
    lines += ["| metric | step | value |", "|---|---|---|"]
    for name, points in sorted(metrics.items()):
        if name == "lr":
            step, value = max(points, key=lambda p: p[1])
            lines.append(f"| peak lr | {step} | {value:.6g} |")
            continue
        step, value = points[-1]
        lines.append(f"| {_METRIC_NAMES.get(name, name)} | {step} | {value:.6g} |")
    lines.append("")
    if len(run_files.logs) > 1:
        lines += [f"Joined from the run's {len(run_files.logs)} metric logs (a resumed run's steps replace "
                  "those logged after its checkpoint).", ""]
    return lines


def _sections(
    adapter_meta: Dict[str, Any], run_files: RunFiles, loss_curve: Optional[str], *, run: bool = True
) -> List[str]:
    """The card's body after its usage: hyperparameters, final metrics, loss curve and
    training configuration (each when known)."""
    lines: List[str] = []
    if adapter_meta:
        kind = get_adapter_kind(method_name_in_file(adapter_meta))
        cfg = adapter_meta.get(f"{kind.name}_config", {})
        lines += [f"## {kind.label} hyperparameters", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in cfg.items()]
        targets = adapter_meta.get("target_modules", [])
        suffixes = sorted({t.rsplit(".", 1)[-1] for t in targets})
        n_params = sum(_numel(s) for s in adapter_meta.get("tensor_shapes", {}).values())
        lines += [
            f"| target modules | {len(targets)} ({', '.join(suffixes)}) |",
            f"| adapter parameters | {n_params:,} |",
            f"| genft_tune version | {adapter_meta.get('genft_tune_version', 'unknown')} |",
            "",
        ]
    if not run:
        return lines
    lines += _metric_lines(run_files)
    if loss_curve:
        lines += ["## Training loss", "", f"![training loss]({loss_curve})", ""]
    if run_files.config is not None:
        lines += [
            "## Training configuration",
            "",
            "<details><summary>torchtune config</summary>",
            "",
            "```yaml",
            run_files.config.read_text().rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    elif run_files.config_problem:
        lines += ["## Training configuration", "", f"Not shown: {run_files.config_problem}.", ""]
    return lines


def _card(meta: Dict[str, Any], lines: List[str]) -> str:
    front = yaml.safe_dump(meta, sort_keys=False).rstrip()
    return f"---\n{front}\n---\n\n" + "\n".join(lines).rstrip() + "\n"


def _tags(method: str, base_card: Dict[str, Any]) -> List[str]:
    own = [method] + TAGS
    return own + [t for t in (base_card.get("tags") or []) if t not in own and isinstance(t, str)]


_QUANTIZED_NOTE = "Trained on a quantized copy of"


def _quantized_base_note(base_card: Dict[str, Any], base_model: Optional[str]) -> List[str]:
    if base_card.get("base_model_relation") != "quantized" or not base_model:
        return []
    return [
        f"{_QUANTIZED_NOTE} [{base_model}](https://huggingface.co/{base_model}) "
        "(its weights dequantized): on the original weights the fine-tune behaves closely, "
        "not identically.",
        "",
    ]


# first line of the card that merged folders get in place of the base's (see write_local_card)
LOCAL_CARD_MARK = "<!-- model card written by genft-tune for a local folder -->"


def folder_base_card(folder: PathLike) -> Dict[str, Any]:
    """What a merged folder's ``README.md`` says about the base: the base's own card
    (folders written before merged folders got their own card), or the front matter of
    the card :func:`write_local_card` wrote (its base, license and tags)."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf8", errors="replace")
    card = front_matter(text)
    if LOCAL_CARD_MARK in text:
        card = {k: card[k] for k in ("base_model", "license", "tags") if k in card}
        if _QUANTIZED_NOTE in text:
            card["base_model_relation"] = "quantized"
    return card


def find_adapter_json(folder: PathLike) -> Dict[str, Any]:
    """The adapter json of a merged folder: its own ``genft_config.json``, or for the image
    recipe's ``hf_model/`` the one of the run's last ``epoch_N``."""
    folder = Path(folder)
    own = read_adapter_json(folder)
    if own or folder.name != "hf_model":
        return own
    epochs = sorted(folder.parent.glob("epoch_*"), key=lambda p: int(p.name[6:]) if p.name[6:].isdigit() else -1)
    return read_adapter_json(epochs[-1]) if epochs else {}


def _merged_card(
    folder: Path,
    *,
    title: str,
    load_id: str,
    base_card: Dict[str, Any],
    license: Optional[str],
    loss_curve: Optional[str],
    base_model: Optional[str],
    run_files: Optional[RunFiles],
    intro: Sequence[str] = (),
    strict_base: bool = True,
    run_sections: bool = True,
    note: Optional[str] = None,
) -> str:
    adapter_meta = find_adapter_json(folder)
    hf_format = (folder / "config.json").is_file()
    try:
        base_model = _base_model(adapter_meta, base_card, base_model)
    except BaseModelUnknown:
        if strict_base:
            raise
        base_model = None
    license = license or base_card.get("license")
    kind = get_adapter_kind(method_name_in_file(adapter_meta))

    meta: Dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
    meta["library_name"] = "transformers" if hf_format else "torchtune"
    meta["tags"] = _tags(kind.name, base_card)
    if license:
        meta["license"] = license
    if hf_format:
        family = find_family(json.loads((folder / "config.json").read_text()))
        meta["pipeline_tag"] = family.pipeline_tag if family else "text-generation"

    lines = [*intro, f"# {title}", ""]
    base_txt = f" of [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
    lines += [
        f"A fine-tuned version{base_txt}, trained with {kind.description} using "
        "[torchtune](https://github.com/pytorch/torchtune) and `genft_tune`. The adapter "
        "(`W = W0 + dW`) is merged into the weights: the model loads like its base, "
        "with no extra dependency.",
        "",
    ]
    lines += _quantized_base_note(base_card, base_model)
    if note:
        lines += [note, ""]
    if hf_format:
        cls = family.auto_class if family else "AutoModelForCausalLM"
        lines += ["## Usage", "", "```python", f"from transformers import {cls}", "", f'model = {cls}.from_pretrained("{load_id}")', "```", ""]
    run_files = find_run_files(folder, adapter_meta) if run_files is None and run_sections else run_files
    lines += _sections(adapter_meta, run_files or RunFiles(), loss_curve, run=run_sections)
    return _card(meta, lines)


def build_model_card(
    folder: PathLike,
    *,
    repo_id: str,
    license: Optional[str] = None,
    loss_curve: Optional[str] = None,
    base_model: Optional[str] = None,
    run_files: Optional[RunFiles] = None,
) -> str:
    """The ``README.md`` text for a merged GenFT model folder.

    Args:
        folder (PathLike): the folder to publish.
        repo_id (str): its Hub id, for the title and the usage snippet.
        license (Optional[str]): overrides the license of the base's card.
        loss_curve (Optional[str]): file name of a loss-curve image in the folder.
        base_model (Optional[str]): the base's Hub id, overriding what the folder records.
        run_files (Optional[RunFiles]): the run's config and metric logs
            (default: :func:`find_run_files`).

    Returns:
        str: YAML front matter (``base_model``, ``library_name``, ``tags``,
        ``license``, ``pipeline_tag``) and a Markdown body.

    Raises:
        BaseModelUnknown: when the base is recorded only as a local path.
    """
    folder = Path(folder)
    return _merged_card(folder, title=repo_id.split("/")[-1], load_id=repo_id, base_card=folder_base_card(folder),
                        license=license, loss_curve=loss_curve, base_model=base_model, run_files=run_files)


def write_local_card(folder: PathLike, *, base_dir: Optional[PathLike], final_path: Optional[PathLike] = None) -> Path:
    """Write a merged folder's own ``README.md`` (replacing the base's card that was copied
    with the base's other files: it describes another model, e.g. a GGUF conversion
    ``base_model_relation: quantized``): the card :func:`build_model_card` writes, for the
    local folder (its usage snippet loads ``final_path``, where the folder ends up), with the
    base's license and Hub id from ``base_dir``'s card. ``genft-tune publish`` reads it back.
    """
    folder = Path(folder)
    final_path = Path(final_path or folder).resolve()
    base_card = read_base_card(base_dir) if base_dir and Path(base_dir).resolve() != folder.resolve() else {}
    intro = [LOCAL_CARD_MARK, ""]
    hint = (f"Written for the local folder `{final_path}`; the run's metrics, loss curve and training config "
            f"are in its logs. `genft-tune publish --folder {final_path} --repo-id USER/NAME` uploads it with a "
            "card for the Hub that shows them.")
    # a base known only by its local path: this card names none (publish asks for --base-model)
    text = _merged_card(folder, title=final_path.name, load_id=str(final_path), base_card=base_card, license=None,
                        loss_curve=None, base_model=None, run_files=None, intro=intro, strict_base=False,
                        run_sections=False, note=hint)
    path = folder / CARD_FILE
    write_text_atomically(path, text)
    return path


def _adapter_base_class(peft_config: Dict[str, Any], adapter_meta: Dict[str, Any], hf_config: Dict[str, Any]):
    """``(pipeline_tag, transformers class, from_pretrained keywords)`` the adapter's
    base loads with: a causal LM, or a ViT classifier with the trained head's classes
    (the base's own head, if any, is replaced: ``ignore_mismatched_sizes``)."""
    if peft_config.get("task_type") == "CAUSAL_LM":
        return "text-generation", "AutoModelForCausalLM", ""
    family = find_family(hf_config)
    if family is not None and not family.is_decoder:  # a classifier (ViT)
        head = (adapter_meta.get("tensor_shapes") or {}).get(family.classifier_key)
        kwargs = f", num_labels={head[0]}, ignore_mismatched_sizes=True" if head else ""
        return family.pipeline_tag, family.auto_class, kwargs
    return None, "AutoModel", ""


def adapter_base_model(
    peft_config: Dict[str, Any],
    *,
    adapter_meta: Optional[Dict[str, Any]] = None,
    base_card: Optional[Dict[str, Any]] = None,
    override: Optional[str] = None,
) -> str:
    """The Hub id of a PEFT adapter's base (what its card and its published
    ``adapter_config.json`` name): ``override``, our json's (``adapter_meta``: the
    ``genft_config.json`` of the same adapter), the base card's, or PEFT's
    ``base_model_name_or_path``.

    Raises:
        BaseModelUnknown: when none of them is a Hub id.
    """
    recorded = peft_config.get("base_model_name_or_path")
    base = _base_model(adapter_meta or {}, base_card or {}, override, recorded)
    if base is None:
        raise BaseModelUnknown("the adapter records no base model: pass --base-model ORG/NAME")
    return base


def build_adapter_card(
    peft_dir: PathLike,
    *,
    repo_id: str,
    adapter_meta: Optional[Dict[str, Any]] = None,
    base_card: Optional[Dict[str, Any]] = None,
    license: Optional[str] = None,
    base_model: Optional[str] = None,
    loss_curve: Optional[str] = None,
    run_files: Optional[RunFiles] = None,
    hf_config: Optional[Dict[str, Any]] = None,
) -> str:
    """The ``README.md`` text for a PEFT-format adapter (``publish --adapter-only``).

    Args:
        peft_dir (PathLike): holds ``adapter_config.json`` + ``adapter_model.safetensors``.
        repo_id (str): the adapter's Hub id, for the title and the usage snippet.
        adapter_meta (Optional[Dict[str, Any]]): our ``genft_config.json`` of the same
            adapter (hyperparameters table).
        base_card (Optional[Dict[str, Any]]): front matter of the base's own card.
        license (Optional[str]): overrides the base card's license.
        base_model (Optional[str]): the base's Hub id, overriding ``base_model_name_or_path``.
        loss_curve (Optional[str]): file name of a loss-curve image.
        run_files (Optional[RunFiles]): the run's config and metric logs.
        hf_config (Optional[Dict[str, Any]]): the base's ``config.json`` (which model
            class the snippet loads).

    Returns:
        str: front matter (``base_model``, ``library_name: peft``, ``license``, ``tags``,
        ``pipeline_tag``) and a body whose usage snippet runs as printed.

    Raises:
        BaseModelUnknown: when the base's Hub id is unknown.
    """
    peft_config = json.loads((Path(peft_dir) / PEFT_CONFIG_FILE).read_text())
    adapter_meta, base_card = dict(adapter_meta or {}), dict(base_card or {})
    base_model = adapter_base_model(peft_config, adapter_meta=adapter_meta, base_card=base_card, override=base_model)
    # the method whose PEFT type the config names (a config without one: our json's method)
    peft_type = peft_config.get("peft_type")
    kind = adapter_kind_for_peft_type(peft_type) if peft_type else get_adapter_kind(method_name_in_file(adapter_meta))
    pipeline_tag, cls, load_kwargs = _adapter_base_class(peft_config, adapter_meta, hf_config or {})
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
    lines += _sections(adapter_meta, run_files or RunFiles(), loss_curve)
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
    "find_adapter_json",
    "find_run_files",
    "folder_base_card",
    "merge_metric_logs",
    "parse_metric_text",
    "RunFiles",
    "write_local_card",
    "loss_curves",
    "moving_average",
    "parse_metric_log",
    "plot_loss_curve",
]
