"""The LLM papers' accuracy-vs-compute curves on the embedded reasoner (s1, m1, TS, First Finish Search).

Runs `ttsplugin eval` (vllm_ttsplugin.reasoner.curves) and writes results.json, the PNG plots and the markdown
tables (reasoning_curves.md) to --out; the committed copy is benchmarks/results/reasoning/. Every option is
`ttsplugin eval`'s (see `ttsplugin eval --help`); only the output folder's default differs.

    python benchmarks/reasoning_curves.py --problems 500 --out benchmarks/results/reasoning
"""

from __future__ import annotations

import sys

from ttsplugin.cli import main as ttsplugin_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--out" or arg.startswith("--out=") for arg in argv):
        argv += ["--out", "build/reasoning_curves"]
    return ttsplugin_main(["eval", *argv])


if __name__ == "__main__":
    sys.exit(main())
