"""`infernetes` command line."""
from __future__ import annotations

import argparse
import logging
import sys
import time

from infernetes.operator.cli import add_operator_commands, run_operator_command
from infernetes.runtime.cli_args import (
    add_compatibility_args, add_engine_args, check_compatibility_args, engine_config_from_args)
from infernetes.runtime.config import ConfigError
from infernetes.runtime.download.cli import add_download_command, run_download
from infernetes.runtime.download.failures import DownloadError
from infernetes.runtime.server.launch import add_server_args, run_server

DEMO_QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about Kubernetes.",
    "Give me three tips for writing clear code.",
    "Explain what a KV cache is in one sentence.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infernetes",
                                     description="Run open LLMs: offline, or as a server.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate", help="generate for a few prompts and print the results (a demo)",
        description="Chat-style generation for each PROMPT (default: a few demo questions) "
                    "with MODEL (default: the embedded SmolLM2-135M-Instruct).")
    generate.add_argument("prompts", nargs="*", metavar="PROMPT")
    generate.add_argument("--model", help="Hugging Face folder, .gguf file or hf://ORG/NAME[@REV]")
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--no-chat", action="store_true",
                          help="use the prompts as raw text, without the chat template")
    add_engine_args(generate)
    serve = commands.add_parser(
        "serve", help="an OpenAI-compatible HTTP server",
        description="Serve MODEL (a Hugging Face folder, a .gguf file or hf://ORG/NAME[@REV]; "
                    "default: the embedded "
                    "SmolLM2-135M-Instruct) over OpenAI's HTTP API.")
    serve.add_argument("model", nargs="?", metavar="MODEL")
    add_server_args(serve)
    add_engine_args(serve)
    add_compatibility_args(serve)
    add_download_command(commands)
    add_operator_commands(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "download":
            return run_download(args)
        if args.command in ("crd", "operator"):
            return run_operator_command(args)
        check_compatibility_args(args)
        return run_server(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"infernetes: error: {e}", file=sys.stderr)
        return 2
    except DownloadError as e:  # fetching an hf:// model for serve or generate
        print(f"infernetes: error: could not fetch the model ({e.reason.value}): {e}",
              file=sys.stderr)
        return e.exit_code


def _generate(args: argparse.Namespace) -> int:
    from infernetes.runtime.llm import LLM
    from infernetes.runtime.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k)
    llm = LLM.from_engine_config(engine_config_from_args(args, args.model))
    prompts = args.prompts or DEMO_QUESTIONS
    started = time.perf_counter()
    if args.no_chat:
        outputs = llm.generate(prompts, params)
    else:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    seconds = time.perf_counter() - started
    num_tokens = 0
    for prompt, output in zip(prompts, outputs):
        completion = output.outputs[0]
        num_tokens += len(completion.token_ids)
        print(f"\n>>> {prompt}\n{completion.text.strip()}\n"
              f"[{len(completion.token_ids)} tokens, finish reason: {completion.finish_reason}]")
    print(f"\n{len(prompts)} prompts, {num_tokens} tokens in {seconds:.2f} s "
          f"({num_tokens / seconds:.1f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
