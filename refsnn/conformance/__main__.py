"""``python -m refsnn.conformance {generate,verify}`` (SPEC section 10)."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refsnn.conformance",
                                description="Conformance vectors of SPEC section 10: generate them "
                                            "with refsnn, or verify a port against them.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the vectors, MANIFEST.json included, under --out")
    g.add_argument("--out", required=True, help="root folder (vectors/ and MANIFEST.json go here)")
    g.add_argument("--suite", action="append", help="only this suite (repeatable); the manifest "
                                                    "keeps the other suites' entries")
    v = sub.add_parser("verify", help="run an adapter on the vectors and compare")
    v.add_argument("--adapter", required=True, help="pkg.module:function, run(case, inputs) -> outputs")
    v.add_argument("--vectors", default="conformance/vectors",
                   help="the vectors folder (default conformance/vectors); MANIFEST.json is read "
                        "from its parent")
    v.add_argument("--suite", action="append", help="only this suite (repeatable)")
    v.add_argument("--case", help="only cases whose name (or suite/name) matches this glob")
    v.add_argument("--report", help="write a JSON report here (always written: \"complete\": false "
                                     "until the run ends)")
    v.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                   help="run dtype: float32 casts the inputs, uses the float32 tolerances and "
                        "skips float64-only cases (default float64)")
    v.add_argument("--manifest", help="MANIFEST.json to check against (default: next to --vectors)")
    v.add_argument("-q", "--quiet", action="store_true", help="print only failing tensors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        from .generate import main as run
    else:
        from .verify import main as run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
