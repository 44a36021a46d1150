"""The `miga-fast` command."""
from __future__ import annotations

import argparse
import json
import sys


def _print_backends(as_json: bool) -> int:
    import miga_fast

    info = miga_fast.backends()
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    v = info["versions"]
    print(f"miga_fast {miga_fast.__version__}  torch {v['torch']} (CUDA {v['torch_cuda']})  "
          f"extension built for torch {v['built_for_torch']}  GPU: {v['gpu'] or 'none visible'}")
    if v["version_note"]:
        print(f"warning: {v['version_note']}")
    print(f"{'backend':<10} {'built':<6} {'runs here':<10} note")
    for name in ("cuda", "triton", "cpu", "reference"):
        b = info[name]
        print(f"{name:<10} {'yes' if b['built'] else 'no':<6} {'yes' if b['runs_here'] else 'no':<10} {b['note']}")
    print(f"selected: {info['selected']}")
    return 0


def main(argv=None) -> int:
    from miga_fast import __version__

    parser = argparse.ArgumentParser(prog="miga-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"miga_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("backends", help="what was built and what runs on this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.command == "backends":
        return _print_backends(args.json)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
