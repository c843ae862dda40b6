"""``genft-tune publish``: upload a merged GenFT model folder, or the PEFT-format adapter
alone, to the Hugging Face Hub with a generated model card (``README.md``) and loss curve.

::

    genft-tune publish --folder ./merged --repo-id me/llama-3.2-1b-genft --private
    genft-tune publish --folder ./out/epoch_0 --repo-id me/llama-3.2-1b-genft-adapter --adapter-only
    genft-tune publish --folder ./merged --repo-id me/llama-3.2-1b-genft --dry-run ./to_upload
"""

import argparse
import logging
import sys
import textwrap

from genft_tune.hub import publish_folder

try:  # huggingface_hub 2.x's HTTP client: its transport errors (no network) are not OSErrors
    from httpx2 import HTTPError as _HTTPError
except ImportError:  # older huggingface_hub: requests, whose errors are OSErrors
    _HTTPError = OSError


def _publish(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        result = publish_folder(
            args.folder,
            repo_id=args.repo_id,
            private=args.private,
            token=args.token,
            dry_run_dir=args.dry_run,
            license=args.license,
            base_model=args.base_model,
            adapter_only=args.adapter_only,
            include_adapter=args.include_adapter,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # the user's input: nothing uploaded
        print(f"genft-tune publish: error: {e}", file=sys.stderr)
        return 2
    except (OSError, _HTTPError) as e:  # the Hub (huggingface_hub's errors are OSErrors) or the network
        print(f"genft-tune publish: error: the upload failed: {e}", file=sys.stderr)
        return 1
    for note in result.get("warnings", []):
        print(f"genft-tune publish: warning: {note}", file=sys.stderr)
    verb = "Would upload" if args.dry_run else "Uploaded"
    print(f"{verb} {len(result['files'])} files to {args.repo_id}: {result['url']}")
    for name in result["files"]:
        print(f"  {name}")
    return 0


def register(subparsers: argparse._SubParsersAction, command: str, help_line: str) -> None:
    """Add the ``publish`` subcommand (``command``), with ``help_line`` as its line in ``genft-tune --help``."""
    parser = subparsers.add_parser(
        command,
        help=help_line,
        description="Create a Hub repo and upload a merged GenFT model folder (or, with --adapter-only, "
        "the PEFT-format adapter of a checkpoint folder), with a generated model card (hyperparameters, "
        "training config, final metrics, loss curve).",
        epilog=textwrap.dedent(
            """\
            The token comes from --token, HF_TOKEN or `hf auth login`; the endpoint from HF_ENDPOINT.
            A folder that would not load as its card says (adapter only, no config.json, incomplete
            weights, no GenFT/WeGeFT adapter json) is refused: exit 2, nothing uploaded.
            examples:
                $ genft-tune publish --folder ./merged --repo-id me/llama-3.2-1b-genft --private
                $ genft-tune publish --folder ./out/epoch_0 --repo-id me/llama-genft-adapter --adapter-only
                $ genft-tune publish --folder ./merged --repo-id me/llama-3.2-1b-genft --dry-run ./to_upload
            """
        ),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--folder", required=True, help="merged model folder (`genft-tune merge` output, or a recipe's last epoch_N: config.json, complete weights, genft_config.json); any checkpoint folder with --adapter-only (a step_N holds only the adapter)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME of the Hub repo (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--dry-run", metavar="OUT_DIR", default=None, help="write the files that would be uploaded to OUT_DIR instead")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the cached login)")
    parser.add_argument("--license", default=None, help="license id for the model card, e.g. apache-2.0 (default: the base card's; a warning when there is none)")
    parser.add_argument("--base-model", default=None, help="Hub id of the base (default: what the folder records; needed when it records only a local path)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--adapter-only", action="store_true", help="upload the PEFT-format adapter alone (adapter_config.json + adapter_model.safetensors)")
    mode.add_argument("--include-adapter", action="store_true", help="also upload the adapter files found next to merged weights")
    parser.set_defaults(func=_publish, parser=parser)
