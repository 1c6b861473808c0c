"""Builds the gRPC stubs from ../protos at install time.

The generated modules land in src/radixfair/v1/ (git-ignored), so both a
regular and an editable install import them as ``radixfair.v1.*_pb2``.
Nothing generated is committed or edited by hand.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_ROOT_CANDIDATES = (HERE.parent / "protos", HERE / "protos")
OUT_DIR = HERE / "src"


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    proto_root = next((p for p in PROTO_ROOT_CANDIDATES if p.is_dir()), None)
    if proto_root is None:
        raise RuntimeError(f"protos/ not found; looked in {PROTO_ROOT_CANDIDATES}")
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={OUT_DIR}",
        f"--pyi_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(protos))
    (OUT_DIR / "radixfair" / "v1" / "__init__.py").touch()


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
