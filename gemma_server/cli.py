"""The `gemma-server` command.

    gemma-server serve [--config FILE] [--checkpoint DIR_OR_HUB_ID] [...]   (see --help)
    gemma-server generate [--checkpoint DIR_OR_HUB_ID] [--dtype D] [--max-tokens N] [--raw] TEXT
    gemma-server info [--checkpoint DIR_OR_HUB_ID]

Without `--checkpoint` all use the embedded demo model. `serve` settings also come from a
TOML/YAML file and `GEMMA_SERVER_*` environment variables; the command line wins. `generate`
wraps TEXT in the chat template (one user turn) unless `--raw` and streams greedy tokens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gemma_server.errors import ConfigurationError


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint directory or Hugging Face Hub id (default: demo model)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="parameter and activation dtype (float16 is refused: it overflows)")
    parser.add_argument("--quantize", default=None, choices=["int8"],
                        help="weight-only int8 (per-channel scales) from the float checkpoint")


def _add_serve_args(serve: argparse.ArgumentParser) -> None:
    a = serve.add_argument
    a("--config", help="TOML or YAML file of settings (keys are the flag names)")
    a("--checkpoint", help="checkpoint directory or Hugging Face Hub id (default: demo model)")
    a("--served-model-name", action="append",
      help="name clients use for the model; repeat for aliases (default: directory name)")
    a("--host", help="address to listen on (default 127.0.0.1)")
    a("--port", type=int, help="port to listen on (default 8000)")
    a("--dtype", choices=["float32", "bfloat16", "float16"], help="default float32")
    a("--quantize", choices=["int8"],
      help="weight-only int8 with per-channel scales, made from the float checkpoint at start")
    a("--api-key", action="append", help="require 'Authorization: Bearer KEY'; repeatable")
    a("--api-key-file", help="file with one API key per line")
    a("--max-batch-size", type=int, help="decode slots (default 8)")
    a("--max-waiting", type=int, help="requests that may wait for a slot (default 128)")
    a("--max-input-length", type=int, help="prompt tokens per request (default 1512)")
    a("--max-total-tokens", type=int, help="prompt + generated tokens (default 2048)")
    a("--max-batch-prefill-tokens", type=int, help="tokens per prefill step (default 1024)")
    a("--decode-steps", type=int,
      help="decode steps per device call while no request waits (default 4; 1: one token "
           "per call, streams without bursts)")
    a("--max-body-bytes", type=int, help="request body limit (default 4 MiB)")
    a("--compilation-cache-dir",
      help="JAX persistent compilation cache: a restart loads compiled steps instead of "
           "compiling them (default: $GEMMA_SERVER_CACHE/xla; 'off' for none)")
    a("--lora", action="append", metavar="NAME=DIR", help="load a PEFT LoRA adapter; repeatable")
    a("--lora-dir", help="load every adapter in this directory (one per subfolder)")
    a("--max-loras", type=int, help="adapters servable at once (default: those given, +4 with "
                                    "--allow-runtime-lora)")
    a("--max-lora-rank", type=int, help="largest adapter rank accepted (default 32)")
    a("--allow-runtime-lora", action="store_true", default=None,
      help="enable /v1/load_lora_adapter and /v1/unload_lora_adapter (needs --api-key)")
    a("--tensor-parallel", type=int, metavar="N",
      help="shard the model over N devices (heads, KV heads, MLP, vocabulary; default 1)")
    a("--data-parallel", type=int, metavar="N",
      help="N replicas of the model, one per device, requests to the least loaded (default 1)")
    a("--memory-utilization", type=float, metavar="FRACTION",
      help="share of each device's memory the weights and KV cache may plan for; start-up "
           "refuses a plan beyond it (default 0.9)")
    a("--coordinator-address", metavar="HOST:PORT",
      help="multi-host: process 0's address for jax.distributed.initialize")
    a("--num-processes", type=int, help="multi-host: processes in the slice")
    a("--process-id", type=int, help="multi-host: this process's index (0 serves HTTP)")
    a("--log-level", choices=["debug", "info", "warning", "error"])
    a("--log-format", choices=["text", "json"],
      help="text (default) or one JSON object per line; either way one line per request")
    a("--shutdown-timeout", type=float,
      help="on SIGTERM, seconds in-flight requests may take to finish before they are "
           "aborted (default 30)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma-server", description="Serve Gemma models.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve_args(commands.add_parser("serve", help="run the HTTP server"))
    generate = commands.add_parser("generate", help="generate a completion greedily")
    _add_model_args(generate)
    generate.add_argument("--max-tokens", type=int, default=64)
    generate.add_argument("--raw", action="store_true", help="send TEXT without the chat template")
    generate.add_argument("text")
    info = commands.add_parser("info", help="print the model's configuration")
    _add_model_args(info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "generate":
            return _generate(args)
        return _info(args)
    except ConfigurationError as exc:
        print(f"gemma-server: error: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from gemma_server.server import serve
    from gemma_server.settings import load_settings

    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    return serve(load_settings(cli, args.config))


def _generate(args: argparse.Namespace) -> int:
    from gemma_server.engine.greedy import greedy_tokens
    from gemma_server.loading import load_model
    from gemma_server.tokenizer import ChatMessage, IncrementalDetokenizer, render_chat

    model = load_model(args.checkpoint, args.dtype, quantize=args.quantize)
    text = args.text if args.raw else render_chat([ChatMessage("user", args.text)])
    prompt = model.tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(model.tokenizer)
    for token in greedy_tokens(model.checkpoint.params, model.checkpoint.config, prompt,
                               args.max_tokens, model.stop_ids):
        sys.stdout.write(detokenizer.add(token))
        sys.stdout.flush()
    sys.stdout.write(detokenizer.flush() + "\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from gemma_server.kernels.library import describe as describe_kernels
    from gemma_server.loading import load_model

    model = load_model(args.checkpoint, args.dtype, progress=False, quantize=args.quantize)
    cfg = model.checkpoint.config
    print(f"name: {model.name}\npath: {model.checkpoint.path}\ndtype: {model.checkpoint.dtype}")
    print(f"quantize: {model.checkpoint.quantize or 'none'}\ndecode kernels: {describe_kernels()}")
    print(f"parameters: {cfg.num_params():,}\nstop ids: {sorted(model.stop_ids)}")
    for field, value in vars(cfg).items():
        print(f"{field}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
