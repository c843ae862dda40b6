"""Mistakes a user makes with the command-line tools (``genft-tune`` and the quickstart),
each with a part of the one message it must print. ``tests/test_bad_cli_inputs.py`` runs
every row and checks exit status 2, that message, no traceback, and that nothing was
written; ``docs/bad_inputs.md`` lists them (its second section).

Placeholders, filled in by the test:

- ``{tmp}``: an empty folder of the case's own;
- ``{file}``: an existing file (``{tmp}/a_file``);
- ``{base}``: a tiny Hugging Face Llama checkpoint (``config.json`` + ``model.safetensors``);
- ``{other_base}``: the same family at another size (4 key/value heads instead of 2);
- ``{tt_base}``: a torchtune-format checkpoint of ``{base}`` (``model.pt``, no ``config.json``);
- ``{adapter}``: an adapter checkpoint of ``{base}`` as a recipe's ``step_N`` writes it
  (``genft_adapter.safetensors`` + ``genft_config.json``, no merged weights);
- ``{merged}``: ``genft-tune merge`` output of ``{base}`` and ``{adapter}``;
- ``{run}``: a recipe's output_dir holding ``epoch_0`` (merged) and ``step_2`` (an adapter).
"""

# (command line, a part of its message)
CLI_BAD_INPUTS = [
    # merge
    ("genft-tune merge --base {tmp}/nowhere --adapter {adapter} --output {tmp}/m",
     "--base {tmp}/nowhere: no such folder (expected the base checkpoint folder"),
    ("genft-tune merge --base {base}/model.safetensors --adapter {adapter} --output {tmp}/m",
     "--base {base}/model.safetensors is a file, not a folder"),
    ("genft-tune merge --base {adapter} --adapter {base} --output {tmp}/m",
     "holds an adapter, not a base model: did you swap --base and --adapter?"),
    ("genft-tune merge --base {base} --adapter {tmp}/nowhere --output {tmp}/m",
     "--adapter {tmp}/nowhere: no such folder"),
    ("genft-tune merge --base {base} --adapter {base} --output {tmp}/m",
     "{base} holds no adapter: expected genft_adapter.safetensors + genft_config.json"),
    ("genft-tune merge --base {other_base} --adapter {adapter} --output {tmp}/m",
     "does not fit"),
    ("genft-tune merge --base {base} --adapter {merged} --output {tmp}/m",
     "--adapter {merged} is a merged model (genft-tune merge output), not an adapter"),
    ("genft-tune merge --base {base} --adapter {adapter} --output {tmp}/m --verify --tolerance -1",
     "--tolerance must be a number >= 0, got -1.0"),
    ("genft-tune merge --base {base} --adapter {adapter} --output {merged}",
     "--output {merged} exists (pass --overwrite to replace it)"),
    ("genft-tune merge --base {base} --adapter {adapter} --output {file}",
     "--output {file} is a file; give a folder to create"),
    ("genft-tune merge --base {base} --adapter {adapter} --output {base} --overwrite",
     "--output {base} is the --base folder"),
    ("genft-tune merge --base {base} --adapter {adapter} --output {adapter}/.. --overwrite",
     "holds the --base folder"),
    ("genft-tune merge --base {base} --adapter {adapter} --output {tmp}/m --max-shard-size five",
     "--max-shard-size: max_shard_size must look like 5GB, 500MB or a byte count, got 'five'"),
    ("genft-tune merge --base {base} --adapter {adapter} --output {tmp}/m --dtype bfloat16",
     "argument --dtype: invalid choice: 'bfloat16' (choose from"),
    ("genft-tune merge --base {tt_base} --adapter {adapter} --output {tmp}/m --verify",
     "--verify compares Hugging Face models, and --base {tt_base} has no config.json"),
    # publish
    ("genft-tune publish --folder {adapter} --repo-id me/tiny --dry-run {tmp}/d",
     "holds an adapter only, no merged weights: publish the adapter with --adapter-only"),
    ("genft-tune publish --folder {run} --repo-id me/tiny --dry-run {tmp}/d",
     "{run} is a run's output_dir, not a checkpoint: publish its last epoch folder, --folder {run}/epoch_0"),
    ("genft-tune publish --folder {tmp}/nowhere --repo-id me/tiny --dry-run {tmp}/d",
     "--folder {tmp}/nowhere does not exist"),
    ("genft-tune publish --folder {file} --repo-id me/tiny --dry-run {tmp}/d",
     "--folder {file} is a file, not a folder"),
    ("genft-tune publish --folder {base} --repo-id me/tiny --dry-run {tmp}/d",
     "no genft_config.json in {base}"),
    ("genft-tune publish --folder {merged} --repo-id tiny --dry-run {tmp}/d",
     "--repo-id must look like USER/NAME"),
    ("genft-tune publish --folder {merged} --repo-id me/my-model/v2 --dry-run {tmp}/d",
     "--repo-id must look like USER/NAME"),
    ("genft-tune publish --folder {merged} --repo-id me/tiny --dry-run {merged}",
     "--dry-run {merged} exists: give a new folder"),
    ("genft-tune publish --folder {merged} --repo-id me/tiny --dry-run {tmp}/d --license Apache-2.0,MIT",
     "--license must be a license id like apache-2.0 or mit"),
    ("genft-tune publish --folder {merged} --repo-id me/tiny --dry-run {tmp}/d --base-model ./Llama-3.2-1B",
     "--base-model must be a Hub id like ORG/NAME, got './Llama-3.2-1B'"),
    ("genft-tune publish --folder {merged} --repo-id me/tiny --dry-run {tmp}/d --adapter-only",
     "no PEFT GenFT/WeGeFT adapter in {merged}"),
    ("genft-tune publish --folder {merged} --repo-id me/tiny --adapter-only --include-adapter",
     "argument --include-adapter: not allowed with argument --adapter-only"),
    # export-peft
    ("genft-tune export-peft {tmp}/nowhere",
     "ADAPTER {tmp}/nowhere: no such folder"),
    ("genft-tune export-peft {merged}",
     "ADAPTER {merged} is a merged model (genft-tune merge output), not an adapter"),
    ("genft-tune export-peft {base}",
     "ADAPTER {base} holds no genft_config.json: pass a recipe's epoch_N or step_N folder"),
    ("genft-tune export-peft {adapter} --base {tmp}/nowhere",
     "--base {tmp}/nowhere: no such folder"),
    ("genft-tune export-peft {adapter} --base {tt_base}",
     "--base {tt_base} has no config.json: PEFT's format needs a Hugging Face base"),
    ("genft-tune export-peft {adapter} --base {other_base} --output {tmp}/p",
     "does not fit"),
    ("genft-tune export-peft {adapter} --output {adapter}",
     "--output {adapter} is the ADAPTER folder"),
    # export-lora
    ("genft-tune export-lora {adapter} --rank 16",
     "--base is required: the LoRA is computed from the base weights"),
    ("genft-tune export-lora {adapter} --rank 0 --base {base}",
     "rank must be an integer >= 1, got 0"),
    ("genft-tune export-lora {adapter} --energy 1.5 --base {base}",
     "energy must be a fraction in (0, 1]"),
    ("genft-tune export-lora {tmp}/nowhere --rank 16 --base {base}",
     "adapter directory {tmp}/nowhere does not exist"),
    ("genft-tune export-lora {base} --rank 16 --base {base}",
     "{base} holds no GenFT/WeGeFT adapter"),
    ("genft-tune export-lora {adapter} --rank 16 --base {tt_base}",
     "--base {tt_base}: no config.json there"),
    ("genft-tune export-lora {adapter} --rank 16 --base {other_base} --output {tmp}/l",
     "does not fit"),
    ("genft-tune export-lora {adapter} --rank 8 --base {base} --output {adapter} --overwrite",
     "--output {adapter} is the ADAPTER folder"),
    ("genft-tune export-lora {adapter} --rank 8 --base {base} --output {base} --overwrite",
     "--output {base} is the --base folder"),
    ("genft-tune export-lora {adapter} --rank 8 --base {base} --output {adapter}/.. --overwrite",
     "holds the ADAPTER folder"),
    ("genft-tune export-lora {merged} --rank 8 --base {base}",
     "is a merged model (genft-tune merge output), not an adapter"),
    # import-authors
    ("genft-tune import-authors {tmp}/nowhere --output {tmp}/o",
     "SRC {tmp}/nowhere: no such folder"),
    ("genft-tune import-authors {base} --output {tmp}/o",
     "SRC {base} has no adapter_config.json"),
    ("genft-tune import-authors {adapter} --output {tmp}/o",
     "SRC {adapter} has no adapter_config.json"),
    # ls / cp / cat
    ("genft-tune cat genft_finetune_single_device",
     "'genft_finetune_single_device' is a recipe, not a config"),
    ("genft-tune cat llama3_2/1B_genft",
     "Config 'llama3_2/1B_genft' not found"),
    ("genft-tune cp llama3_2/1B_genft_single_device {tmp}/no/such/dir/my.yaml",
     "use the --make-parents flag"),
    ("genft-tune cp no_such_recipe {tmp}",
     "Invalid file name: no_such_recipe"),
    # quickstart
    ("python -m genft_tune.quickstart --max-steps 0",
     "argument --max-steps: must be an integer >= 1, got '0'"),
    ("python -m genft_tune.quickstart --work-dir {file}",
     "--work-dir {file} is a file, not a folder"),
    ("python -m genft_tune.quickstart batch_size 2",
     "overrides must look like key=value or ~key, got 'batch_size'"),
]
