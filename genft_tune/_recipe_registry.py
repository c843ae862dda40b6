"""Our recipes and their configs, and how their names resolve to files.

Layout (one source of truth for each file):

- recipes live in the repository's ``recipes/`` folder (no ``__init__.py``: torchtune's
  wheel owns the importable name ``recipes``) and are installed as top-level modules
  (``genft_finetune_single_device``...), so ``tune run genft_finetune_single_device``
  runs them (torchtune runs a recipe name it does not know with ``runpy.run_module``);
- configs live in the repository's ``configs/<family>/<name>.yaml`` and ship inside
  the package as ``genft_tune/configs`` (a link to ``../configs`` in a checkout, real
  files in a wheel), so the same names work from a checkout, an editable install and
  an installed wheel. A config belongs to the recipe its own header names in its launch
  line (``tune run <recipe> --config <family/stem>``), so adding a yaml file is all it
  takes to list and run a new config.

``tune run`` only knows torchtune's own config names, so each recipe calls
:func:`resolve_config_argv` before parsing its arguments: ``--config
llama3_2/1B_genft_single_device`` becomes the packaged yaml's path, while a yaml path
is used as given.
"""

import difflib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

import yaml

import genft_tune

_PACKAGE_DIR = Path(genft_tune.__file__).resolve().parent


@dataclass(frozen=True)
class Config:
    """A packaged config: ``name`` (``family/stem``), ``file_path`` relative to the configs folder."""

    name: str
    file_path: str


@dataclass(frozen=True)
class Recipe:
    """A recipe: ``name`` (its module), ``file_path`` (its file name), configs, distributed or not."""

    name: str
    file_path: str
    configs: List[Config] = field(default_factory=list)
    supports_distributed: bool = False


_RECIPES = [  # name, distributed
    ("genft_finetune_single_device", False),
    ("genft_finetune_distributed", True),
    ("genft_finetune_image_single_device", False),
]

# The launch line every config's header carries, as torchtune's configs do:
# "#   tune run [--nnodes N --nproc_per_node N ...] <recipe> --config <family/stem>"
_LAUNCH_LINE = re.compile(r"tune run (?:--\S+ \S+ )*(\w+) --config (\S+)")


def _recipe_of(path: Path, name: str) -> Optional[str]:
    """The recipe named in the config's own launch line (``tune run <recipe> --config <name>``)."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = _LAUNCH_LINE.search(line)
        if match and match.group(2) == name:
            return match.group(1)
    return None


@lru_cache(maxsize=None)
def _all_recipes() -> tuple:
    """Every recipe with the configs in the configs folder whose launch line names it."""
    root = configs_dir()
    found = {name: [] for name, _ in _RECIPES}
    for path in sorted(root.glob("*/*.yaml")):
        name = path.relative_to(root).with_suffix("").as_posix()
        recipe = _recipe_of(path, name)
        if recipe in found:
            found[recipe].append(Config(name=name, file_path=f"{name}.yaml"))
    return tuple(
        Recipe(name=name, file_path=f"{name}.py", configs=found[name], supports_distributed=distributed)
        for name, distributed in _RECIPES
    )


def get_all_recipes() -> List[Recipe]:
    """Every recipe this package ships, with its configs."""
    return list(_all_recipes())


def get_recipe(name: str) -> Optional[Recipe]:
    """The recipe called ``name``, or None."""
    return next((r for r in _all_recipes() if r.name == name), None)


def get_config(name: str) -> Optional[Config]:
    """The packaged config called ``name`` (``family/stem``, ``.yaml`` optional), or None."""
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    for recipe in _all_recipes():
        for config in recipe.configs:
            if config.name == name:
                return config
    return None


def configs_dir() -> Path:
    """The folder holding the packaged configs.

    ``genft_tune/configs`` (a wheel, or a checkout where it links to ``../configs``),
    else the checkout's top-level ``configs/`` (a checkout where the link is missing).
    """
    inside = _PACKAGE_DIR / "configs"
    if inside.is_dir():
        return inside
    return _PACKAGE_DIR.parent / "configs"


def config_path(name: str) -> Path:
    """The yaml file of the packaged config ``name``.

    Raises:
        ValueError: if no packaged config has that name (listing the ones that do).
    """
    config = get_config(name)
    if config is None:
        raise ValueError(f"no packaged config named {name!r}{did_you_mean(name)}; `genft-tune ls` lists them all")
    return configs_dir() / config.file_path


def did_you_mean(name: str) -> str:
    """``" (did you mean 'smollm2/135M_genft_cpu'?)"`` for the closest packaged config
    names (empty when none is close)."""
    known = [c.name for r in _all_recipes() for c in r.configs]
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def recipe_path(name: str) -> Path:
    """The file of the recipe ``name``: the installed top-level module, else the
    checkout's ``recipes/`` file.

    Raises:
        ValueError: if there is no recipe of that name, or its file cannot be found.
    """
    recipe = get_recipe(name)
    if recipe is None:
        raise ValueError(
            f"no recipe named {name!r}; recipes: {[name for name, _ in _RECIPES]}"
        )
    spec = importlib.util.find_spec(recipe.name)
    if spec is not None and spec.origin and Path(spec.origin).is_file():
        return Path(spec.origin)
    checkout = _PACKAGE_DIR.parent / "recipes" / recipe.file_path
    if checkout.is_file():
        return checkout
    raise ValueError(f"recipe {name!r} is registered, but its file {recipe.file_path} is not installed")


# Components a recipe runs without: ``X=null`` switches one off (torchtune's CLI sets
# ``X._component_`` to null; the recipes' pre-flight reads that as "none"), and so does
# ``~X``, which torchtune itself refuses for a component.
OPTIONAL_COMPONENTS = ("dataset_val", "eval_dataset", "lr_scheduler")


def resolve_config_argv(argv: List[str]) -> List[str]:
    """Turn ``--config <packaged name>`` in ``argv`` (in place) into the packaged yaml's
    path (a value that is an existing file is left alone), and ``~X`` of an optional
    component ``X`` into ``X=null``.

    Args:
        argv (List[str]): ``sys.argv`` of a recipe.

    Returns:
        List[str]: ``argv``, modified in place.

    Raises:
        SystemExit: with a clear message (status 2) when the value is neither a file nor
            a packaged config name, or ``~X`` would remove a component the recipe needs.
    """
    config_file = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            index, value = i + 1, argv[i + 1]
        elif arg.startswith("--config="):
            index, value = i, arg.split("=", 1)[1]
        else:
            continue
        if Path(value).is_file():
            config_file = Path(value)
        elif get_config(value) is not None:
            config_file = config_path(value)
            argv[index] = str(config_file) if index != i else f"--config={config_file}"
        else:
            _usage_error(argv, f"--config {value!r} is neither a yaml file nor a packaged config name"
                         f"{did_you_mean(value)}; `genft-tune ls` lists the packaged configs")
        break
    if config_file is not None:
        _switch_off_components(argv, config_file)
    return argv


def _switch_off_components(argv: List[str], config_file: Path) -> None:
    """``~X`` of a component: ``X=null`` for an optional one, one message for another."""
    try:
        cfg = yaml.safe_load(config_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # torchtune's own parsing reports it
    for i, arg in enumerate(argv):
        if not arg.startswith("~"):
            continue
        key = arg[1:].split("=", 1)[0]
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not (isinstance(node, dict) and "_component_" in node):
            continue  # not a component: torchtune removes it
        if key in OPTIONAL_COMPONENTS:
            argv[i] = f"{key}=null"
        else:
            _usage_error(argv, f"{arg}: {key} is a component the recipe needs, and torchtune does not remove "
                         f"components from the command line; replace it with {key}._component_=<dotted path>, "
                         "or copy the config (genft-tune cp) and edit it")


def _usage_error(argv: List[str], message: str) -> None:
    print(f"{Path(argv[0]).stem if argv else 'recipe'}: error: {message}", file=sys.stderr)
    raise SystemExit(2)