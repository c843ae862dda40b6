"""Write the GenFT configs of the decoder families from torchtune's own LoRA configs.

Each config is torchtune's LoRA config for the same model (from the installed torchtune
wheel: dataset, tokenizer, checkpointer, batch sizes, schedule, memory switches), with
only what GenFT changes: the model section (``genft_tune.models.genft_model`` on torchtune's
base builder, GenFT on q_proj and v_proj with ``GenFTConfig``'s defaults), the learning
rate measured for those defaults (``genft_tune.modules.genft.config.RECOMMENDED_LR``), the
recipe names and the output directory. Gemma 2 uses ``genft_tune.models.gemma2`` and
``genft_tune.checkpointing.HFCheckpointer`` (torchtune's differ from the checkpoints);
Qwen3, which torchtune lacks, is derived from the Qwen2.5 configs.

    python configs/derive_family_configs.py          # rewrite the files
    python configs/derive_family_configs.py --check  # exit 1 if a file is out of date

``tests/test_catalog.py`` runs the check.
"""

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, Iterator, Tuple

CONFIGS = Path(__file__).resolve().parent

# (our family dir, our stem) -> (torchtune family dir, torchtune stem)
SINGLE = {
    ("qwen2_5", "0.5B"): ("qwen2_5", "0.5B_lora_single_device"),
    ("qwen2_5", "1.5B"): ("qwen2_5", "1.5B_lora_single_device"),
    ("qwen2_5", "3B"): ("qwen2_5", "3B_lora_single_device"),
    ("qwen2_5", "7B"): ("qwen2_5", "7B_lora_single_device"),
    ("gemma2", "2B"): ("gemma2", "2B_lora_single_device"),
    ("gemma2", "9B"): ("gemma2", "9B_lora_single_device"),
    ("mistral", "7B"): ("mistral", "7B_lora_single_device"),
    ("phi3", "mini"): ("phi3", "mini_lora_single_device"),
    ("phi4", "14B"): ("phi4", "14B_lora_single_device"),
}
DISTRIBUTED = {
    ("qwen2_5", "0.5B"): ("qwen2_5", "0.5B_lora"),
    ("qwen2_5", "1.5B"): ("qwen2_5", "1.5B_lora"),
    ("qwen2_5", "3B"): ("qwen2_5", "3B_lora"),
    ("qwen2_5", "7B"): ("qwen2_5", "7B_lora"),
    ("qwen2_5", "32B"): ("qwen2_5", "32B_lora"),
    ("gemma2", "2B"): ("gemma2", "2B_lora"),
    ("gemma2", "9B"): ("gemma2", "9B_lora"),
    ("mistral", "7B"): ("mistral", "7B_lora"),
    ("phi3", "mini"): ("phi3", "mini_lora"),
    ("phi4", "14B"): ("phi4", "14B_lora"),
    ("llama3_3", "70B"): ("llama3_3", "70B_lora"),
}
# Qwen3 size -> (Hub id, our builder); derived from the Qwen2.5 config of a similar size
QWEN3 = {
    "0.6B": ("Qwen/Qwen3-0.6B", "qwen3_0_6b", "0.5B_lora_single_device"),
    "1.7B": ("Qwen/Qwen3-1.7B", "qwen3_1_7b", "1.5B_lora_single_device"),
    "4B": ("Qwen/Qwen3-4B", "qwen3_4b", "3B_lora_single_device"),
    "8B": ("Qwen/Qwen3-8B", "qwen3_8b", "7B_lora_single_device"),
}
# torchtune builders that do not match the checkpoints -> ours
BASE_OVERRIDES = {"torchtune.models.gemma2.gemma2_2b": "genft_tune.models.gemma2.gemma2_2b",
                  "torchtune.models.gemma2.gemma2_9b": "genft_tune.models.gemma2.gemma2_9b"}
CHECKPOINTER_OVERRIDES = {"GEMMA2": "genft_tune.checkpointing.HFCheckpointer", "QWEN3": "genft_tune.checkpointing.HFCheckpointer"}


def torchtune_configs_dir() -> Path:
    """Where torchtune's wheel keeps its configs (as ``tune ls`` finds them)."""
    import torchtune

    return Path(torchtune.__file__).resolve().parent.parent / "recipes" / "configs"


def _model_block(base: str) -> str:
    from genft_tune.modules import GenFTConfig

    d = GenFTConfig()
    return (
        "model:\n"
        "  _component_: genft_tune.models.genft_model\n"
        f"  base: {base}\n"
        "  targets: [q_proj, v_proj]\n"
        f"  shared_dim: {d.shared_dim}      # a: width of the layer-shared factors P, Q\n"
        f"  specific_dim: {d.specific_dim}    # b: width of the per-layer factors A, B\n"
        f"  ratio: {d.ratio}           # scales W0 inside the generator\n"
        f"  scaling: {d.scaling}        # scales dW (the lr below is the one measured for this ratio/scaling)\n"
        f"  act_in: {d.act_in}\n"
        f"  act_out: {d.act_out}\n"
        f"  dropout: {d.dropout}\n"
        f"  zero_init: {d.zero_init}      # dW = 0 at step 0: training starts from the base model exactly\n"
    )


def _replace_top_level(text: str, key: str, block: str) -> str:
    """Replace the top-level ``key:`` block (up to the next top-level key or comment)."""
    m = re.search(rf"(?m)^{key}:\n(?:[ \t]+.*\n|\n)*?(?=^\S)", text)
    if not m:
        raise ValueError(f"no top-level {key!r} block")
    return text[: m.start()] + block + "\n" + text[m.end():]


def derive(template: str, *, name: str, template_name: str, distributed: bool, qwen3: Tuple[str, str] = None) -> str:
    """Our config text from torchtune's LoRA config text."""
    from genft_tune.modules.genft.config import RECOMMENDED_LR

    text = template
    m = re.search(r"(?m)^  _component_: (torchtune\.models\.\S+)\.lora_(\w+)\s*$", text)
    if not m:
        raise ValueError(f"{template_name}: no torchtune lora_* model component")
    base = f"{m.group(1)}.{m.group(2)}"
    base = BASE_OVERRIDES.get(base, base)
    if qwen3:
        hub, builder = qwen3
        base = f"genft_tune.models.qwen3.{builder}"
        old_dir = re.search(r"(?m)^  checkpoint_dir: (\S+?)/?\s*$", text).group(1)
        new_dir = "/tmp/" + hub.split("/")[1]
        text = text.replace(old_dir, new_dir)
        text = re.sub(r"tune download \S+", f"tune download {hub} --output-dir {new_dir}", text)
        text = re.sub(r"(?m)^(  model_type: )\S+", r"\1QWEN3", text)
        size = name.split("/")[1].split("_")[0]
        text = re.sub(r"Qwen2\.5 \S+ model", f"Qwen3 {size} model", text)
        text = re.sub(r"/tmp/torchtune/qwen2_5_[^/]+/", f"/tmp/torchtune/qwen3_{size.replace('.', '_')}/", text)
    text = _replace_top_level(text, "model", _model_block(base))
    for model_type, component in CHECKPOINTER_OVERRIDES.items():
        if re.search(rf"(?m)^  model_type: {model_type}\s*$", text):
            text = text.replace("  _component_: torchtune.training.FullModelHFCheckpointer", f"  _component_: {component}")
    lr = f"{RECOMMENDED_LR:.0e}".replace("e-0", "e-")  # 1e-2, as written by hand
    text = re.sub(r"(?m)^(  lr: )\S+", rf"\g<1>{lr}", text, count=1)
    recipe = "genft_finetune_distributed" if distributed else "genft_finetune_single_device"
    text = text.replace("lora_finetune_distributed", recipe).replace("lora_finetune_single_device", recipe)
    text = text.replace(f"--config {template_name}", f"--config {name}")
    text = re.sub(r"(?m)^(output_dir: \S*?)lora(_single_device)?\b", lambda mm: mm.group(1) + "genft" + ("_single_device" if not distributed else "_distributed"), text)
    text = text.replace("LoRA", "GenFT")
    note = (
        f"# Derived from torchtune's {template_name}.yaml by configs/derive_family_configs.py: GenFT on\n"
        "# q_proj and v_proj with GenFTConfig's measured defaults (benchmarks/README.md), everything\n"
        "# else as torchtune's LoRA config.\n#\n"
    )
    first_blank = text.index("\n#\n") + 3
    return text[:first_blank] + note + text[first_blank:]


def expected() -> Iterator[Tuple[Path, str]]:
    src = torchtune_configs_dir()
    for distributed, table in ((False, SINGLE), (True, DISTRIBUTED)):
        suffix = "genft_distributed" if distributed else "genft_single_device"
        for (family, stem), (tt_family, tt_stem) in table.items():
            name = f"{family}/{stem}_{suffix}"
            template = (src / tt_family / f"{tt_stem}.yaml").read_text()
            yield CONFIGS / f"{name}.yaml", derive(template, name=name, template_name=f"{tt_family}/{tt_stem}", distributed=distributed)
    for size, (hub, builder, tt_stem) in QWEN3.items():
        name = f"qwen3/{size}_genft_single_device"
        template = (src / "qwen2_5" / f"{tt_stem}.yaml").read_text()
        yield CONFIGS / f"{name}.yaml", derive(template, name=name, template_name=f"qwen2_5/{tt_stem}", distributed=False, qwen3=(hub, builder))


def config_names() -> Dict[str, bool]:
    """``{config name: distributed}`` of every derived config."""
    return {str(p.relative_to(CONFIGS).with_suffix("")): "distributed" in p.stem for p, _ in expected()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = p.parse_args(argv)
    stale = []
    for path, text in expected():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("out of date (run python configs/derive_family_configs.py):", *map(str, stale), sep="\n  ")
        return 1
    print(f"{'checked' if args.check else 'wrote'} {len(list(expected()))} configs ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
