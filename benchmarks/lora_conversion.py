# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""What serving a GenFT/WeGeFT adapter as a LoRA (``genft-tune export-lora``) costs, on the
quickstart task (SmolLM2-135M-Instruct, WordNet definitions, q and v projections).

For the GenFT adapter of ``make quickstart`` (``outputs/quickstart/run/epoch_0``; trained
here first when missing) and a WeGeFT adapter trained the same way (the shipped
``smollm2/135M_wegeft_cpu`` config with the quickstart's overrides, r = 64), it writes the
LoRA at each ``--ranks`` and reports, on held-out WordNet lemmas (the validation split):

* the held-out loss (mean token cross-entropy of the answers) of the base, the adapter
  and each LoRA;
* the largest |logit difference| between each LoRA and its adapter (the adapter's merged
  checkpoint, loaded by transformers) over every answer and prompt position;
* the energy of ``dW`` the LoRA keeps (worst layer, mean), and the LoRA's size.

Every LoRA is loaded by PEFT (``PeftModel.load_adapter``, one model, one adapter name per
LoRA). Examples::

    python benchmarks/lora_conversion.py                       # -> benchmarks/results/lora_conversion.{md,json}
    python benchmarks/lora_conversion.py --ranks 8,64 --examples 32 --no-wegeft
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from genft_tune.checkpointing._lora_export import export_lora_adapter  # noqa: E402

WEGEFT_CONFIG = "smollm2/135M_wegeft_cpu"


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=str(REPO / "outputs" / "quickstart"),
                   help="the quickstart's work dir (base/ and run/epoch_0; trained here when missing)")
    p.add_argument("--ranks", default="8,16,32,64,128", help="LoRA ranks for the GenFT adapter")
    p.add_argument("--energy", type=float, default=0.99, help="also one LoRA at this energy (0: none)")
    p.add_argument("--examples", type=int, default=256, help="held-out WordNet examples")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-wegeft", action="store_true", help="skip the WeGeFT adapter (its training run)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lora_conversion.json"))
    p.add_argument("--table-only", action="store_true", help="rewrite OUT's .md from its .json (no run)")
    return p.parse_args(argv)


def ensure_genft_run(work_dir: Path) -> Path:
    """``work_dir/run/epoch_0`` of the quickstart (run here when missing)."""
    run = work_dir / "run" / "epoch_0"
    if not (run / "genft_config.json").is_file():
        from genft_tune.quickstart import quickstart

        print(f"no quickstart adapter in {run}: running the quickstart (a few minutes on CPU) ...", flush=True)
        quickstart(work_dir=work_dir)
    return run


def ensure_wegeft_run(work_dir: Path, base: Path) -> Path:
    """A WeGeFT adapter on the quickstart task: the shipped config, the quickstart's steps."""
    run = work_dir / "wegeft_run" / "epoch_0"
    if (run / "genft_config.json").is_file():
        return run
    from omegaconf import OmegaConf

    from genft_tune._recipe_registry import config_path
    from genft_tune.quickstart import QUICKSTART_OVERRIDES, run_recipe

    cfg = OmegaConf.load(config_path(WEGEFT_CONFIG))
    cfg.output_dir = str(work_dir / "wegeft_run")
    cfg.checkpointer.checkpoint_dir = str(base)
    cfg.tokenizer.path = str(base / "tokenizer.json")
    cfg.metric_logger.filename = "log.txt"
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(QUICKSTART_OVERRIDES)))
    print(f"training a WeGeFT adapter ({WEGEFT_CONFIG}, {cfg.max_steps_per_epoch} steps) ...", flush=True)
    run_recipe(cfg)
    return run


def held_out_batches(base: Path, examples: int, batch_size: int) -> List[Dict[str, torch.Tensor]]:
    """The validation split of the quickstart's dataset (lemmas never trained on), as
    right-padded batches: ``input_ids``, ``attention_mask``, ``labels`` (shifted, -100
    outside the answers)."""
    from genft_tune.datasets import wordnet_instruct_dataset
    from genft_tune.models.smollm2 import smollm2_tokenizer

    tokenizer = smollm2_tokenizer(str(base / "tokenizer.json"), max_seq_len=128)
    ds = wordnet_instruct_dataset(tokenizer, split="validation", max_examples=examples)
    samples = [ds[i] for i in range(len(ds))]
    batches = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        n = max(len(s["tokens"]) for s in chunk)
        ids = torch.zeros(len(chunk), n, dtype=torch.long)
        mask = torch.zeros(len(chunk), n, dtype=torch.long)
        labels = torch.full((len(chunk), n), -100, dtype=torch.long)
        for i, s in enumerate(chunk):
            k = len(s["tokens"])
            ids[i, :k] = torch.tensor(s["tokens"])
            mask[i, :k] = 1
            labels[i, : k - 1] = torch.tensor([int(t) for t in s["labels"][1:]])  # next-token targets
        batches.append(dict(input_ids=ids, attention_mask=mask, labels=labels))
    return batches


class Scores:
    """Held-out loss (sum and count) and max |logit diff| against a reference."""

    def __init__(self):
        self.loss_sum, self.tokens, self.max_diff = 0.0, 0, 0.0

    def add(self, logits, batch, reference=None):
        labels = batch["labels"]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum")
        self.loss_sum += float(loss)
        self.tokens += int((labels != -100).sum())
        if reference is not None:
            valid = batch["attention_mask"].bool()
            self.max_diff = max(self.max_diff, float((logits - reference).abs()[valid].max()))

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens


def _hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.table_only:
        result = json.loads(Path(args.out).read_text())
        Path(args.out).with_suffix(".md").write_text(format_table(result) + "\n")
        return result
    torch.manual_seed(0)
    work_dir = Path(args.work_dir)
    runs = {"genft": ensure_genft_run(work_dir)}
    base = work_dir / "base"
    if not args.no_wegeft:
        runs["wegeft"] = ensure_wegeft_run(work_dir, base)
    lora_root = work_dir / "lora_conversion"

    # every LoRA: (method, rank or energy, dir, export result)
    loras = []
    for method, run in runs.items():
        cfg = json.loads((run / "genft_config.json").read_text())
        choices = [("rank", int(r)) for r in args.ranks.split(",")] if method == "genft" else \
            [("rank", int(cfg["wegeft_config"]["rank"]))]
        if method == "genft" and args.energy:
            choices.append(("energy", args.energy))
        for kind, value in choices:
            out = lora_root / f"{method}_{kind}_{value}"
            t0 = time.perf_counter()
            result = export_lora_adapter(run, base_dir=base, output_dir=out, overwrite=True, **{kind: value})
            loras.append(dict(method=method, kind=kind, value=value, dir=out, result=result,
                              export_seconds=time.perf_counter() - t0))
            print(f"{method} {kind}={value}: " + result.summary()[0], flush=True)

    from peft import PeftModel

    import genft_tune.peft  # noqa: F401  (not needed for LoRA; keeps the environment honest)

    batches = held_out_batches(base, args.examples, args.batch_size)
    model = None
    for i, lora in enumerate(loras):
        name = f"lora{i}"
        if model is None:
            model = PeftModel.from_pretrained(_hf(base), str(lora["dir"]), adapter_name=name).eval()
        else:
            model.load_adapter(str(lora["dir"]), adapter_name=name)
    references = {m: _hf(run) for m, run in runs.items()}  # the adapters' merged checkpoints (W0 + dW)

    scores = {"base": Scores(), **{m: Scores() for m in runs}, **{f"lora{i}": Scores() for i in range(len(loras))}}
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            with model.disable_adapter():
                scores["base"].add(model(**inputs).logits, batch)
            ref_logits = {}
            for m, ref in references.items():
                ref_logits[m] = ref(**inputs).logits
                scores[m].add(ref_logits[m], batch)
            for i, lora in enumerate(loras):
                model.set_adapter(f"lora{i}")
                scores[f"lora{i}"].add(model(**inputs).logits, batch, ref_logits[lora["method"]])
    eval_seconds = time.perf_counter() - t0

    rows = [dict(model="base", loss=scores["base"].loss)]
    for m in runs:
        rows.append(dict(model=f"{m} adapter", loss=scores[m].loss))
        for i, lora in enumerate(loras):
            if lora["method"] != m:
                continue
            res = lora["result"]
            params = sum(p.numel() for k, p in _lora_tensors(lora["dir"]).items())
            rows.append(dict(
                model=f"{m} -> LoRA", choice=f"{lora['kind']} {lora['value']}", rank=res.rank, params=params,
                energy_min=min(c.energy for c in res.layers),
                energy_mean=sum(c.energy for c in res.layers) / len(res.layers),
                exact_layers=sum(c.exact for c in res.layers), layers=len(res.layers),
                max_logit_diff=scores[f"lora{i}"].max_diff, loss=scores[f"lora{i}"].loss,
                export_seconds=lora["export_seconds"],
            ))
    result = dict(
        task="quickstart: SmolLM2-135M-Instruct, WordNet definitions (validation lemmas), GenFT/WeGeFT on q_proj, v_proj",
        examples=sum(len(b["input_ids"]) for b in batches), answer_tokens=scores["base"].tokens,
        eval_seconds=eval_seconds, adapters={m: _relative(r) for m, r in runs.items()}, rows=rows,
        torch=torch.__version__, threads=torch.get_num_threads(),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(format_table(result) + "\n")
    print(format_table(result))
    return result


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _lora_tensors(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def format_table(result: Dict) -> str:
    lines = [
        f"Held-out loss on {result['examples']} WordNet validation examples ({result['answer_tokens']} answer tokens); "
        "max |logit diff| of each LoRA against its adapter's merged checkpoint over every position (fp32); "
        "energy lost: 1 - the fraction of ||dW||_F^2 the LoRA keeps (worst layer / mean); exact layers: dW's rank "
        "(to fp32 round-off) <= the LoRA's.",
        "",
        "| model | LoRA | rank | LoRA params | energy lost (worst / mean) | exact layers | max abs logit diff | held-out loss |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "rank" not in r:
            lines.append(f"| {r['model']} | | | | | | | {r['loss']:.4f} |")
            continue
        lines.append(
            f"| {r['model']} | {r['choice']} | {r['rank']} | {r['params']:,} | {1 - r['energy_min']:.1e} / "
            f"{1 - r['energy_mean']:.1e} | {r['exact_layers']}/{r['layers']} | {r['max_logit_diff']:.2e} | {r['loss']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
