"""Regenerate the Python code for the protos under protos/nas/v1.

The output is written beside each .proto file and committed. With
--check, nothing is written: the script generates into a temporary
directory and exits with status 1 if the committed code differs, which is
how the test command catches a .proto edited without regenerating.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(output: Path) -> None:
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(path.relative_to(PROTO_ROOT)) for path in PROTO_ROOT.glob("nas/v1/*.proto"))
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={output}",
            f"--pyi_out={output}",
            f"--grpc_python_out={output}",
            *sources,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")


def check() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        expected = sorted(path.relative_to(scratch) for path in Path(scratch).rglob("*") if path.is_file())
        committed = sorted(
            path.relative_to(PROTO_ROOT)
            for path in PROTO_ROOT.rglob("*")
            if path.is_file() and path.name.endswith(_GENERATED_SUFFIXES)
        )
        stale = sorted(str(path) for path in set(expected) ^ set(committed))
        stale += [
            str(path)
            for path in expected
            if path in committed and not filecmp.cmp(Path(scratch) / path, PROTO_ROOT / path, shallow=False)
        ]
    if stale:
        print("Generated code differs from protos/: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    arguments = parser.parse_args()
    if arguments.check:
        return check()
    generate(PROTO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
