"""``genft-tune publish``: the model card, ``--dry-run``, and the real upload code
(``huggingface_hub`` 2.4's ``create_repo`` + ``upload_folder``) against a fake Hub on
127.0.0.1 that records the requests and answers the minimal API they use:
``/api/repos/create``, ``/api/validate-yaml``, ``/api/models/{repo}/preupload/main``
(every file ``regular``, i.e. inline in the commit; no LFS/xet) and
``/api/models/{repo}/commit/main`` (NDJSON)."""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from genft_tune._cli.genft import main as cli_main
from genft_tune.checkpointing import save_genft_adapter
from genft_tune.hub import build_model_card, parse_metric_log, publish_folder
from genft_tune.modules import genft_linear, GenFTConfig, GenFTGenerators, get_genft_adapter_state_dict

REPO_ID = "someone/tiny-genft"
LOSSES = [2.5, 2.1, 1.8, 1.6]


@pytest.fixture
def merged_folder(tmp_path):
    """A small folder shaped like ``genft-tune merge`` output (weights need not be real)."""
    folder = tmp_path / "merged"
    folder.mkdir()
    save_file({"model.embed_tokens.weight": torch.randn(8, 4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: org/base-model\ntags: [llama]\n---\n# Base\n")
    config = GenFTConfig(shared_dim=2, specific_dim=3, ratio=0.25)
    gens = GenFTGenerators(config)
    m = torch.nn.Module()
    m.genft_generators = gens
    m.q = genft_linear(4, 4, generators=gens)
    adapter = tmp_path / "adapter"
    save_genft_adapter(adapter, adapter_state_dict=get_genft_adapter_state_dict(m.state_dict()), config=config,
                       target_modules=["q"], base_model="org/base-model")
    (folder / "genft_config.json").write_bytes((adapter / "genft_config.json").read_bytes())
    (folder / "torchtune_config.yaml").write_text(yaml.safe_dump({"batch_size": 4, "optimizer": {"lr": 0.001}}))
    (folder / "training_log.txt").write_text(
        "".join(f"Step {i + 1} | loss:{v} lr:0.001 tokens_per_second_per_gpu:12.5 \n" for i, v in enumerate(LOSSES))
    )
    (folder / ".cache").mkdir()  # hidden: never published
    (folder / ".cache" / "x").write_text("x")
    return folder


def card_front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


def test_model_card_content(merged_folder):
    card = build_model_card(merged_folder, repo_id=REPO_ID, loss_curve="loss_curve.png")
    meta = card_front_matter(card)
    assert meta["base_model"] == "org/base-model"
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers"
    assert meta["tags"][:3] == ["genft", "peft", "torchtune"] and "llama" in meta["tags"]
    genft = json.loads((merged_folder / "genft_config.json").read_text())
    for key, value in genft["genft_config"].items():
        assert f"| {key} |" in card
    assert "| shared_dim | 2 |" in card and "| ratio | 0.25 |" in card
    assert f"| loss | {len(LOSSES)} | {LOSSES[-1]:.6g} |" in card  # final metrics
    assert "batch_size: 4" in card  # training config
    assert "![training loss](loss_curve.png)" in card
    assert parse_metric_log(merged_folder / "training_log.txt")["loss"] == list(enumerate(LOSSES, start=1))
    # a local base path is not a Hub id: base_model falls back to the base's card, or is omitted
    assert "base_model" not in card_front_matter(build_model_card(merged_folder.parent, repo_id=REPO_ID))


def expected_files(folder: Path):
    # genft_config.json (the adapter's json) stays local: the card carries its hyperparameters
    own = {"model.safetensors", "config.json", "tokenizer.json", "torchtune_config.yaml", "training_log.txt"}
    return sorted(own | {"README.md", "loss_curve.png"})


def test_dry_run_writes_exactly_the_files_to_upload(merged_folder, tmp_path, capsys):
    out = tmp_path / "dry"
    before = {p: p.read_bytes() for p in merged_folder.rglob("*") if p.is_file()}
    assert cli_main(["publish", "--folder", str(merged_folder), "--repo-id", REPO_ID, "--dry-run", str(out)]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == expected_files(merged_folder)
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert (out / "model.safetensors").read_bytes() == (merged_folder / "model.safetensors").read_bytes()
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert card_front_matter((out / "README.md").read_text())["license"] == "apache-2.0"
    assert {p: p.read_bytes() for p in merged_folder.rglob("*") if p.is_file()} == before  # untouched
    printed = capsys.readouterr().out
    assert all(f"  {f}" in printed for f in files)
    assert cli_main(["publish", "--folder", str(merged_folder), "--repo-id", REPO_ID, "--dry-run", str(out)]) == 1


def test_errors(tmp_path, merged_folder):
    with pytest.raises(ValueError, match="USER/NAME"):
        publish_folder(merged_folder, repo_id="no-namespace", dry_run_dir=tmp_path / "d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weights"):
        publish_folder(tmp_path / "empty", repo_id=REPO_ID, dry_run_dir=tmp_path / "d")
    assert not (tmp_path / "d").exists()


class _FakeHub(BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.requests.append({"method": "GET", "path": self.path})
        self._reply(404, {"error": "not in the fake hub"})

    do_HEAD = do_GET

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        record = {"method": "POST", "path": path, "auth": self.headers.get("Authorization")}
        self.requests.append(record)
        base = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        if path == "/api/repos/create":
            record["json"] = json.loads(body)
            return self._reply(200, {"url": f"{base}/{REPO_ID}", "name": REPO_ID})
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if path == f"/api/models/{REPO_ID}/preupload/main":
            files = json.loads(body)["files"]
            record["json"] = files
            return self._reply(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
            ]})
        if path == f"/api/models/{REPO_ID}/commit/main":
            record["ndjson"] = [json.loads(line) for line in body.splitlines() if line.strip()]
            return self._reply(200, {"commitUrl": f"{base}/{REPO_ID}/commit/{'a' * 40}", "commitOid": "a" * 40,
                                     "pullRequestUrl": None})
        self._reply(404, {"error": "not in the fake hub"})


@pytest.fixture
def fake_hub():
    _FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopper = threading.Timer(120, server.shutdown)  # bounded even if the test hangs
    stopper.daemon = True
    stopper.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _FakeHub.requests
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()


def test_publish_to_local_fake_hub(merged_folder, tmp_path, fake_hub):
    endpoint, requests = fake_hub
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_TOKEN="hf_fake_token_for_tests", HF_HOME=str(tmp_path / "hf_home"),
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    proc = subprocess.run(
        [sys.executable, "-m", "genft_tune._cli.genft", "publish", "--folder", str(merged_folder),
         "--repo-id", REPO_ID, "--private"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = [r["path"] for r in requests]
    assert paths[0] == "/api/repos/create"
    assert requests[0]["json"]["name"] == "tiny-genft" and requests[0]["json"]["organization"] == "someone"
    assert requests[0]["json"].get("visibility") == "private" or requests[0]["json"].get("private") is True
    assert all(r.get("auth") == "Bearer hf_fake_token_for_tests" for r in requests if r["method"] == "POST")
    commits = [r for r in requests if r["path"].endswith("/commit/main")]
    assert len(commits) == 1
    header, *ops = commits[0]["ndjson"]
    assert header["key"] == "header"
    uploaded = {op["value"]["path"]: base64.b64decode(op["value"]["content"]) for op in ops if op["key"] == "file"}
    assert sorted(uploaded) == expected_files(merged_folder)
    assert uploaded["model.safetensors"] == (merged_folder / "model.safetensors").read_bytes()
    assert card_front_matter(uploaded["README.md"].decode())["tags"][:3] == ["genft", "peft", "torchtune"]
    assert uploaded["loss_curve.png"][:4] == b"\x89PNG"
    unexpected = [p for p in paths if p not in (
        "/api/repos/create", "/api/validate-yaml", f"/api/models/{REPO_ID}/preupload/main", f"/api/models/{REPO_ID}/commit/main")]
    assert not unexpected, unexpected


def test_publish_without_token_is_a_clear_error(merged_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="HF_TOKEN"):
        publish_folder(merged_folder, repo_id=REPO_ID)


def test_loss_curve_is_smoothed_as_well_as_raw(tmp_path):
    from genft_tune.hub import plot_loss_curve
    from genft_tune.hub._model_card import loss_curves, moving_average

    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    raw = {step: 3.0 - 0.01 * step + (0.5 if step % 2 else -0.5) for step in range(1, 61)}
    curves = loss_curves({"loss": raw, "val_loss": [(20, 2.9), (60, 2.5)]})
    assert list(curves) == ["loss", "loss (moving average of 6)", "val_loss"]
    smooth = curves["loss (moving average of 6)"][1]
    assert max(abs(a - b) for a, b in zip(smooth[10:], smooth[11:])) < 0.1  # the zig-zag is gone
    assert curves["loss"][1] == [raw[s] for s in range(1, 61)]  # the raw line is still drawn
    path = plot_loss_curve({"loss": raw}, tmp_path / "c.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- a recipe's checkpoint folder: merged weights, our adapter pair, PEFT's pair ---------


def _recipe_run(tmp_path, *, base_card: bool):
    from test_recipes_fixtures import base_config, run_recipe_in_process, SINGLE_DEVICE_RECIPE, write_config

    cfg = base_config(tmp_path, max_steps_per_epoch=3, epochs=1)
    base = Path(cfg["checkpointer"]["checkpoint_dir"])
    if base_card:
        (base / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: org/tiny-llama\n---\n# tiny\n")
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "cfg.yaml"))
    return dict(out=Path(cfg["output_dir"]), base=base)


@pytest.fixture
def recipe_run(tmp_path):
    """A real recipe run on the tiny Llama (its HF base written by transformers, with a card
    naming its Hub source and license, as the quickstart's SmolLM2 conversion has): its
    last ``epoch_N`` holds merged weights, our adapter pair and ``peft/``; the config and
    metric log are in the output dir."""
    return _recipe_run(tmp_path, base_card=True)


def test_recipe_epoch_folder_publishes_the_merged_model_without_adapter_files(recipe_run, tmp_path):
    epoch = recipe_run["out"] / "epoch_0"
    assert (epoch / "genft_adapter.safetensors").is_file() and (epoch / "peft" / "adapter_config.json").is_file()
    out = tmp_path / "dry"
    assert cli_main(["publish", "--folder", str(epoch), "--repo-id", REPO_ID, "--dry-run", str(out)]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert not any(f.startswith("peft/") or f.startswith("genft_") or f.startswith("adapter_") for f in files), files
    assert {"training_log.txt", "torchtune_config.yaml", "loss_curve.png", "README.md"} <= set(files)  # the run's
    card = (out / "README.md").read_text()
    meta = card_front_matter(card)
    assert meta["base_model"] == "org/tiny-llama" and meta["license"] == "apache-2.0"
    assert "## Final metrics" in card and "| loss | 3 |" in card
    out2 = tmp_path / "dry2"
    assert cli_main(["publish", "--folder", str(epoch), "--repo-id", REPO_ID, "--dry-run", str(out2), "--include-adapter"]) == 0
    assert (out2 / "genft_adapter.safetensors").is_file() and (out2 / "peft" / "adapter_model.safetensors").is_file()


def _hub_cache_repo(cache: Path, repo_id: str, files: dict) -> None:
    """``files`` as the snapshot of ``repo_id`` in a huggingface_hub cache (what a download leaves)."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, src in files.items():
        (snap / name).write_bytes(Path(src).read_bytes())


def run_card_snippet(card: str, tmp_path: Path, repos: dict, check: str) -> None:
    """Run the card's python block unmodified (then ``check``) in a fresh interpreter that
    finds ``repos`` (``{repo_id: {file name: source path}}``) in an offline Hub cache."""
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    cache = tmp_path / "hub"
    for repo_id, files in repos.items():
        _hub_cache_repo(cache, repo_id, files)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.run([sys.executable, "-c", snippet + check], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_adapter_only_card_and_its_snippet_runs_as_printed(recipe_run, tmp_path):
    """``--adapter-only`` stages PEFT's pair and a card for PEFT; the card's usage snippet,
    taken from the card text, runs unmodified against a Hub cache holding the base and the
    adapter, and gives the recipe's merged model."""
    pytest.importorskip("peft")
    epoch, base = recipe_run["out"] / "epoch_0", recipe_run["base"]
    out = tmp_path / "dry"
    assert cli_main(["publish", "--folder", str(epoch), "--repo-id", REPO_ID, "--dry-run", str(out), "--adapter-only"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "loss_curve.png"]
    card = (out / "README.md").read_text()
    meta = card_front_matter(card)
    assert meta == {"base_model": "org/tiny-llama", "library_name": "peft", "tags": ["genft", "peft", "torchtune"],
                    "license": "apache-2.0", "pipeline_tag": "text-generation"}
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'from_pretrained("org/tiny-llama")' in snippet and f'from_pretrained(base, "{REPO_ID}")' in snippet

    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    torch.save(tokens, tmp_path / "tokens.pt")
    check = (f"\nimport torch\nwith torch.no_grad():\n    logits = merged.eval()(torch.load({str(tmp_path / 'tokens.pt')!r})).logits\n"
             f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\n")
    run_card_snippet(card, tmp_path, {
        "org/tiny-llama": {n: base / n for n in ("config.json", "model.safetensors")},
        REPO_ID: {n: out / n for n in ("adapter_config.json", "adapter_model.safetensors")},
    }, check)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(epoch), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), merged(tokens).logits, rtol=1e-4, atol=1e-4)


def test_unknown_base_asks_for_base_model(tmp_path, capsys):
    """A base without a card or original_repo_id.json is recorded by its local path only."""
    epoch = _recipe_run(tmp_path, base_card=False)["out"] / "epoch_0"
    for flag in ([], ["--adapter-only"]):
        args = ["publish", "--folder", str(epoch), "--repo-id", REPO_ID, "--dry-run", str(tmp_path / "d"), *flag]
        assert cli_main(args) == 1
        assert "pass --base-model ORG/NAME" in capsys.readouterr().err
        assert not (tmp_path / "d").exists()
    assert cli_main(args + ["--base-model", "org/named"]) == 0
    assert card_front_matter((tmp_path / "d" / "README.md").read_text())["base_model"] == "org/named"
    # the uploaded adapter_config.json names it too (not the local path it was trained from)
    assert json.loads((tmp_path / "d" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/named"
