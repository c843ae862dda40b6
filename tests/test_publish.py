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
from genft_tune.checkpointing import save_adapter
from genft_tune.cards import build_model_card, parse_metric_log
from genft_tune.hub import publish_folder
from genft_tune.modules import genft_linear, GenFTConfig, GenFTGenerators
from genft_tune.modules.genft import get_genft_adapter_state_dict

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
    save_adapter(adapter, adapter_state_dict=get_genft_adapter_state_dict(m.state_dict()), config=config,
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
    assert cli_main(["publish", "--folder", str(merged_folder), "--repo-id", REPO_ID, "--dry-run", str(out)]) == 2


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


def test_publish_without_a_network_is_one_message_and_exit_1(merged_folder, tmp_path, monkeypatch, capsys):
    """No route to the Hub: huggingface_hub 2.x raises its HTTP client's transport error
    (not an OSError); the command says the upload failed, without a traceback."""
    from huggingface_hub import constants

    from genft_tune._cli.genft import main

    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    code = main(["publish", "--folder", str(merged_folder), "--repo-id", REPO_ID])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "genft-tune publish: error: the upload failed:" in err and "Traceback" not in err


def test_loss_curve_is_smoothed_as_well_as_raw(tmp_path):
    from genft_tune.cards import plot_loss_curve
    from genft_tune.cards._model_card import loss_curves, moving_average

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


def _recipe_run(tmp_path, *, base_card: bool, **overrides):
    from _recipe_runs import run_recipe_in_process, SINGLE_DEVICE_RECIPE, write_config
    from _tiny_llama import base_config

    cfg = base_config(tmp_path, max_steps_per_epoch=3, epochs=1, **overrides)
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
    return _recipe_run(tmp_path, base_card=True, save_every_n_steps=2)


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


def test_adapter_only_card_and_its_snippet_runs_as_printed(recipe_run, tmp_path, run_card_snippet):
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
        assert cli_main(args) == 2
        assert "pass --base-model ORG/NAME" in capsys.readouterr().err
        assert not (tmp_path / "d").exists()
    assert cli_main(args + ["--base-model", "org/named"]) == 0
    assert card_front_matter((tmp_path / "d" / "README.md").read_text())["base_model"] == "org/named"
    # the uploaded adapter_config.json names it too (not the local path it was trained from)
    assert json.loads((tmp_path / "d" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/named"


# ---- issue 23: folders that would not load as their card says, cards across resumes -------


def _publish_dry(folder, out, *flags):
    return cli_main(["publish", "--folder", str(folder), "--repo-id", REPO_ID, "--dry-run", str(out), *flags])


def test_publish_refuses_folders_that_would_not_load(recipe_run, tmp_path, capsys):
    """Each refusal: exit 2, one message, nothing staged; transformers itself fails on each
    refused folder and loads the accepted one (the staged upload)."""
    import shutil

    from transformers import AutoModelForCausalLM

    out_dir, dry = recipe_run["out"], tmp_path / "dry"
    broken = {}
    broken["adapter only"] = out_dir / "step_2"  # mid-epoch checkpoint: the adapter alone
    for name, edit in (
        ("no config.json", lambda d: (d / "config.json").unlink()),  # Ctrl-C during the final save
        ("no genft_config.json", lambda d: (d / "genft_config.json").unlink()),  # not a GenFT model
        ("truncated shard", lambda d: [p.write_bytes(p.read_bytes()[:-100]) for p in d.glob("model-*.safetensors")]),
    ):
        folder = tmp_path / "copies" / name.replace(" ", "_")
        shutil.copytree(out_dir / "epoch_0", folder)
        edit(folder)
        broken[name] = folder
    expected = {
        "adapter only": "holds an adapter only, no merged weights: publish the adapter with --adapter-only",
        "no config.json": "has weights but no config.json, so transformers cannot load it",
        "no genft_config.json": "no genft_config.json in",
        "truncated shard": "is incomplete",
    }
    for name, folder in broken.items():
        assert _publish_dry(folder, dry) == 2, name
        err = capsys.readouterr().err
        assert expected[name] in err and err.count("error:") == 1 and "Traceback" not in err, (name, err)
        assert not dry.exists() and not list(tmp_path.glob("dry.tmp-*")), name
    for name in ("adapter only", "no config.json", "truncated shard"):  # what a user would get from the Hub
        with pytest.raises(Exception):
            AutoModelForCausalLM.from_pretrained(str(broken[name]))
    # the adapter-only checkpoint publishes as what it is
    assert _publish_dry(broken["adapter only"], dry, "--adapter-only") == 0
    shutil.rmtree(dry)
    # the complete folder is accepted, and what it stages loads in transformers as the card says
    assert _publish_dry(out_dir / "epoch_0", dry) == 0
    assert "AutoModelForCausalLM.from_pretrained" in (dry / "README.md").read_text()
    staged = AutoModelForCausalLM.from_pretrained(str(dry), dtype=torch.float32).eval()
    original = AutoModelForCausalLM.from_pretrained(str(out_dir / "epoch_0"), dtype=torch.float32).eval()
    tokens = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(staged(tokens).logits, original(tokens).logits, rtol=0, atol=0)


def _output_dir_with_logs(tmp_path, merged_folder, logs):
    """A recipe's output dir: ``epoch_0`` (the merged folder without its own run files),
    the run's config and ``logs/`` (``{name: text}``, written oldest first)."""
    import shutil
    import time

    out = tmp_path / "run"
    shutil.copytree(merged_folder, out / "epoch_0")
    (out / "epoch_0" / "training_log.txt").unlink()
    (out / "epoch_0" / "torchtune_config.yaml").rename(out / "torchtune_config.yaml")
    (out / "logs").mkdir()
    for i, (name, text) in enumerate(logs.items()):
        (out / "logs" / name).write_text(text)
        os.utime(out / "logs" / name, (time.time() - 100 + i, time.time() - 100 + i))
    return out


def _steps(first, last, loss, **extra):
    tail = "".join(f" {k}:{v}" for k, v in extra.items())
    return "".join(f"Step {s} | loss:{loss(s)} lr:0.001{tail} \n" for s in range(first, last + 1))


def test_card_covers_the_whole_run_across_resumes(merged_folder, tmp_path):
    """Ctrl-C at step 7 after the step_4 checkpoint, resumed: the resumed run logs 5..10 in a
    new file. The card, its curve and the staged training_log.txt cover steps 1..10, steps
    5..7 from the resumed run (it replaces what was logged after the checkpoint)."""
    first = _steps(1, 7, lambda s: 3.0 - 0.1 * s)
    resumed = _steps(5, 10, lambda s: 2.0 - 0.01 * s)
    out = _output_dir_with_logs(tmp_path, merged_folder, {"log_1700000000.txt": first, "log_1700000500.txt": resumed})
    dry = tmp_path / "dry"
    assert _publish_dry(out / "epoch_0", dry) == 0
    log = parse_metric_log(dry / "training_log.txt")
    assert [s for s, _ in log["loss"]] == list(range(1, 11))
    assert dict(log["loss"])[5] == pytest.approx(2.0 - 0.05) and dict(log["loss"])[4] == pytest.approx(3.0 - 0.4)
    card = (dry / "README.md").read_text()
    assert f"| loss | 10 | {2.0 - 0.1:.6g} |" in card and "Joined from the run's 2 metric logs" in card
    # the same when the resumed run appended to the same file (a fixed metric_logger.filename)
    out2 = _output_dir_with_logs(tmp_path / "b", merged_folder, {"log.txt": first + resumed})
    assert _publish_dry(out2 / "epoch_0", tmp_path / "dry2") == 0
    assert parse_metric_log(tmp_path / "dry2" / "training_log.txt") == log
    # merging the adapter of that run writes the same whole log next to the merged weights
    from genft_tune.checkpointing._merge import _copy_run_files
    from genft_tune.checkpointing import load_adapter_config

    (tmp_path / "m").mkdir()
    _copy_run_files(out / "epoch_0", load_adapter_config(out / "epoch_0"), tmp_path / "m")
    assert parse_metric_log(tmp_path / "m" / "training_log.txt") == log
    # a validation line shares its step with the training line; a resume at the last logged
    # step repeats that step's loss (appended to the same file)
    from genft_tune.cards._model_card import merge_metric_logs, parse_metric_text

    (tmp_path / "one.txt").write_text("Step 1 | loss:3.0 \nStep 2 | loss:2.0 \nStep 2 | val_loss:2.5 \n"
                                      "Step 3 | loss:1.9 \nStep 3 | loss:1.8 \nStep 4 | loss:1.7 \n")
    joined = parse_metric_text(merge_metric_logs([tmp_path / "one.txt"]))
    assert joined == {"loss": [(1, 3.0), (2, 2.0), (3, 1.8), (4, 1.7)], "val_loss": [(2, 2.5)]}


def test_card_after_a_failed_rerun_in_the_same_output_dir(merged_folder, tmp_path):
    """A later start that failed rewrote torchtune_config.yaml (another shared_dim) and left
    an empty log: the card takes the hyperparameters of the published adapter, the metrics
    of the run that trained it, and says why the config is not shown."""
    out = _output_dir_with_logs(tmp_path, merged_folder, {"log_1700000000.txt": _steps(1, 4, lambda s: 2.0 / s),
                                                         "log_1700009999.txt": ""})
    (out / "torchtune_config.yaml").write_text(yaml.safe_dump({"model": {"shared_dim": 8, "specific_dim": 3}}))
    dry = tmp_path / "dry"
    assert _publish_dry(out / "epoch_0", dry) == 0
    card = (dry / "README.md").read_text()
    assert "| shared_dim | 2 |" in card  # the adapter's own
    assert "shared_dim: 8" not in card and not (dry / "torchtune_config.yaml").exists()
    assert "Not shown: the run's" in card and "model.shared_dim is 8, the adapter's shared_dim is 2" in card
    assert "| loss | 4 | 0.5 |" in card
    # no log at all: the card says so
    import shutil

    shutil.rmtree(out / "logs")
    shutil.rmtree(dry)
    assert _publish_dry(out / "epoch_0", dry) == 0
    card = (dry / "README.md").read_text()
    assert "No metric log was found for this checkpoint" in card and "| loss |" not in card


def test_card_metrics_per_device_and_peak_lr_and_license_warning(merged_folder, tmp_path, capsys):
    """A CPU run's log says tokens_per_second_per_gpu and ends with lr 0 (cosine schedule):
    the card names the rate per device and reports the peak lr; a base card without a
    license gives a card without one and a warning naming --license."""
    lrs = {1: 0.0005, 2: 0.001, 3: 0.0005, 4: 0.0}
    (merged_folder / "training_log.txt").write_text("".join(
        f"Step {s} | loss:{2.0 / s} lr:{lr} tokens_per_second_per_gpu:12.5 \n" for s, lr in lrs.items()))
    (merged_folder / "README.md").write_text("---\nbase_model: org/base-model\n---\n# Base\n")
    dry = tmp_path / "dry"
    assert _publish_dry(merged_folder, dry) == 0
    card = (dry / "README.md").read_text()
    assert "tokens_per_second_per_gpu" not in card and "| tokens_per_second_per_device | 4 | 12.5 |" in card
    assert "| lr |" not in card and "| peak lr | 2 | 0.001 |" in card
    assert "license" not in card_front_matter(card)
    err = capsys.readouterr().err
    assert "warning: no license found" in err and "--license" in err
    assert _publish_dry(merged_folder, tmp_path / "dry2", "--license", "mit") == 0
    assert card_front_matter((tmp_path / "dry2" / "README.md").read_text())["license"] == "mit"
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("checkpointer", ["genft_tune.checkpointing.HFCheckpointer", "torchtune.training.FullModelHFCheckpointer"])
def test_recipe_merged_folder_has_its_own_card_and_true_dtype(tmp_path, checkpointer):
    """A bf16 run on an fp32 base whose card is a GGUF conversion's (base_model_relation:
    quantized): epoch_N's config.json says the dtype its tensors have (bf16: the training
    dtype, as torchtune's LoRA recipes write merged weights), and its README.md is a card for
    this model (the base's Hub id and license, the quantized-copy note), not the base's.
    transformers loads it in the dtype the config names."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    base_card = "---\nlicense: apache-2.0\nbase_model: org/tiny-llama\nbase_model_relation: quantized\n---\n# GGUF\n"
    from _recipe_runs import run_recipe_in_process, SINGLE_DEVICE_RECIPE, write_config
    from _tiny_llama import base_config

    cfg = base_config(tmp_path, max_steps_per_epoch=2, epochs=1, dtype="bf16", **{"checkpointer._component_": checkpointer})
    base = Path(cfg["checkpointer"]["checkpoint_dir"])
    (base / "README.md").write_text(base_card)
    assert json.loads((base / "config.json").read_text()).get("dtype", "float32") == "float32"
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "cfg.yaml"))
    epoch = Path(cfg["output_dir"]) / "epoch_0"
    tensors = {k: v for p in epoch.glob("model*.safetensors") for k, v in load_file(str(p)).items()}
    assert tensors and {v.dtype for v in tensors.values()} == {torch.bfloat16}
    config = json.loads((epoch / "config.json").read_text())
    assert {config.get(k) for k in ("torch_dtype", "dtype") if k in config} == {"bfloat16"}
    assert AutoConfig.from_pretrained(str(epoch)).dtype == torch.bfloat16
    assert AutoModelForCausalLM.from_pretrained(str(epoch)).dtype == torch.bfloat16
    card = (epoch / "README.md").read_text()
    meta = card_front_matter(card)
    assert card != base_card and "base_model_relation" not in meta and "# GGUF" not in card
    assert meta["base_model"] == "org/tiny-llama" and meta["license"] == "apache-2.0" and meta["tags"][0] == "genft"
    assert "Trained on a quantized copy of [org/tiny-llama]" in card
    assert f'from_pretrained("{epoch.resolve()}")' in card
    # publish reads it back: the base's license and the quantized note stay on the Hub card
    assert _publish_dry(epoch, tmp_path / "dry") == 0
    hub_card = (tmp_path / "dry" / "README.md").read_text()
    assert card_front_matter(hub_card)["license"] == "apache-2.0"
    assert "Trained on a quantized copy of [org/tiny-llama]" in hub_card and f'from_pretrained("{REPO_ID}")' in hub_card


def test_resumed_recipe_run_publishes_the_whole_run(tmp_path):
    """A real run interrupted after step 3 (its step_2 checkpoint and log on disk), resumed
    in the same output_dir (a new log file, as DiskLogger names them by start time): the
    staged training_log.txt and the card hold steps 1..5 once each, with the losses of the
    same run uninterrupted."""
    import shutil

    from _recipe_runs import (
        run_recipe_in_process,
        run_single_device_with_snapshot,
        SINGLE_DEVICE_RECIPE,
        write_config,
    )
    from _tiny_llama import base_config, DELETE

    run = {"max_steps_per_epoch": 5, "epochs": 1, "save_every_n_steps": 2, "batch_size": 2,
           "metric_logger.filename": DELETE}
    cfg = base_config(tmp_path, **run)
    cfg_path = write_config(cfg, tmp_path / "cfg.yaml")
    snapshot = tmp_path / "crashed"
    run_single_device_with_snapshot(cfg_path, crash_after_step=3, snapshot=snapshot)
    reference = parse_metric_log(next((Path(cfg["output_dir"]) / "logs").glob("log_*.txt")))["loss"]
    assert [s for s, _ in reference] == [1, 2, 3, 4, 5]
    shutil.rmtree(snapshot / "epoch_0", ignore_errors=True)  # not there yet when it crashed
    (old_log,) = (snapshot / "logs").glob("log_*.txt")
    started = int(old_log.stem.split("_")[1]) - 100  # the interrupted run started earlier
    old_log.rename(old_log.with_name(f"log_{started}.txt"))
    resumed = base_config(tmp_path, ckpt_dir=Path(cfg["checkpointer"]["checkpoint_dir"]), output_dir=str(snapshot),
                          resume_from_checkpoint=True, **run)
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(resumed, tmp_path / "resumed.yaml"))
    assert len(list((snapshot / "logs").glob("log_*.txt"))) == 2
    dry = tmp_path / "dry"
    assert _publish_dry(snapshot / "epoch_0", dry, "--base-model", "org/tiny") == 0
    staged = parse_metric_log(dry / "training_log.txt")["loss"]
    assert [s for s, _ in staged] == [1, 2, 3, 4, 5]
    assert [v for _, v in staged] == pytest.approx([v for _, v in reference], rel=1e-5)
    assert f"| loss | 5 | {reference[-1][1]:.6g} |" in (dry / "README.md").read_text()


def test_publish_stages_a_config_with_the_weights_dtype(merged_folder, tmp_path):
    """A folder written before recipes set the dtype (bf16 tensors, config.json float32):
    the staged config.json says bfloat16 and loads as such; the folder is untouched."""
    from transformers import AutoConfig

    save_file({"model.embed_tokens.weight": torch.randn(8, 4, dtype=torch.bfloat16)}, str(merged_folder / "model.safetensors"))
    before = (merged_folder / "config.json").read_text()
    assert _publish_dry(merged_folder, tmp_path / "dry") == 0
    assert json.loads((tmp_path / "dry" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert AutoConfig.from_pretrained(str(tmp_path / "dry")).dtype == torch.bfloat16
    assert (merged_folder / "config.json").read_text() == before


def test_image_recipe_hf_model_takes_the_last_epochs_adapter_json(merged_folder, tmp_path):
    """The image recipe writes its merged model to output_dir/hf_model and the adapter json
    to each epoch_N: publish takes the last epoch's (the card's hyperparameters)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(merged_folder, run / "hf_model")
    (run / "epoch_1").mkdir()
    (run / "hf_model" / "genft_config.json").rename(run / "epoch_1" / "genft_config.json")
    (run / "epoch_0").mkdir()
    assert _publish_dry(run / "hf_model", tmp_path / "dry") == 0
    assert "| shared_dim | 2 |" in (tmp_path / "dry" / "README.md").read_text()
