"""An app that picks its LLM backend from abstractcore.toml, not from its code.

    python examples/config_profiles.py "Name three rivers."     # uses [profiles.prod]
    python examples/config_profiles.py --profile local "Hi"     # the embedded MLX model
    python examples/config_profiles.py --show                   # which backend, no request

Edit [profiles.prod] in the TOML file to move the app to LM Studio, Ollama, OpenAI or any
OpenAI-compatible server; this file stays the same. The file used is ./abstractcore.toml,
or ABSTRACTCORE_CONFIG; when neither exists, the one next to this script.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from abstractcore import create_llm
from abstractcore.errors import AbstractCoreError


def main(argv: list[str] | None = None) -> int:
    """Answer one prompt with the backend the config file names."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prompt", nargs="?", default="Say hello in five words.")
    parser.add_argument(
        "--profile", default="prod", help="profile in the TOML file (default: prod)"
    )
    parser.add_argument("--show", action="store_true", help="print the backend and exit")
    args = parser.parse_args(argv)

    if not os.environ.get("ABSTRACTCORE_CONFIG") and not Path("abstractcore.toml").is_file():
        os.environ["ABSTRACTCORE_CONFIG"] = str(Path(__file__).with_name("abstractcore.toml"))

    try:
        with create_llm(profile=args.profile) as llm:
            base_url = getattr(llm, "base_url", None)
            print(
                f"profile={args.profile} backend={type(llm).__name__} model={llm.model}"
                + (f" base_url={base_url}" if base_url else "")
            )
            if args.show:
                return 0
            for chunk in llm.stream(args.prompt):
                print(chunk.content, end="", flush=True)
            print()
    except AbstractCoreError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
