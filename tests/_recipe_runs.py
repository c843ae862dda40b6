"""Running the recipes from the tests (no tests here): their files, their configs written
as yaml, in-process and subprocess runs, and the metrics their ``DiskLogger`` writes."""

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO_ROOT / "recipes"
SINGLE_DEVICE_RECIPE = RECIPES_DIR / "genft_finetune_single_device.py"
DISTRIBUTED_RECIPE = RECIPES_DIR / "genft_finetune_distributed.py"


def write_config(cfg: Dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load_recipe_module(recipe_file: Path):
    """Import a recipe file as a fresh module (it is not importable by name)."""
    name = f"_genft_test_{recipe_file.stem}"
    spec = importlib.util.spec_from_file_location(name, recipe_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe_in_process(recipe_file: Path, config_path: Path, overrides: Sequence[str] = ()) -> None:
    """Run a recipe's ``recipe_main`` in this process, as ``tune run`` would."""
    module = load_recipe_module(recipe_file)
    argv = sys.argv
    sys.argv = [str(recipe_file), "--config", str(config_path), *overrides]
    try:
        module.recipe_main()
    except SystemExit as e:  # torchtune's config.parse ends with sys.exit(recipe_main(...))
        if e.code not in (None, 0):
            raise
    finally:
        sys.argv = argv


def run_single_device_with_snapshot(config_path: Path, *, crash_after_step: int, snapshot: Path) -> None:
    """Run the single-device recipe in this process; when it logs ``crash_after_step``
    its output folder is copied to ``snapshot``: what a run that crashed right there
    would have left on disk."""
    from omegaconf import OmegaConf

    module = load_recipe_module(SINGLE_DEVICE_RECIPE)
    cfg = OmegaConf.load(config_path)
    recipe = module.GenFTFinetuneRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    log_dict = recipe._metric_logger.log_dict

    def log_and_snapshot(payload, step):
        log_dict(payload, step)
        if step == crash_after_step and "loss" in payload:
            recipe._metric_logger._file.flush()
            shutil.copytree(recipe._output_dir, snapshot)

    recipe._metric_logger.log_dict = log_and_snapshot
    recipe.train()
    recipe.cleanup()


_STEP = re.compile(r"^Step (\d+) \| (.*)$")


def read_metrics(log_file: Path) -> Dict[str, Dict[int, float]]:
    """``{metric: {step: value}}`` from a torchtune ``DiskLogger`` file."""
    out: Dict[str, Dict[int, float]] = {}
    for line in Path(log_file).read_text().splitlines():
        m = _STEP.match(line.strip())
        if not m:
            continue
        step = int(m.group(1))
        for item in m.group(2).split():
            if ":" not in item:
                continue
            name, value = item.split(":", 1)
            try:
                out.setdefault(name, {})[step] = float(value)
            except ValueError:
                pass
    return out


def losses(log_file: Path) -> List[float]:
    m = read_metrics(log_file)["loss"]
    return [m[s] for s in sorted(m)]


def subprocess_env(extra_pythonpath: Sequence[str] = ()) -> Dict[str, str]:
    """Environment for recipe subprocesses: offline, quiet, few threads."""
    env = dict(os.environ)
    paths = [*map(str, extra_pythonpath)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    return env
