"""Build step of the backend (DESIGN.md §13): the event contracts in proto-schemas/ are
compiled into ``services/common/events/_gen`` by setuptools' ``build_py``, so an editable
install, ``pip install .`` and a wheel are all complete without running a script by hand.
Everything else about the package is in pyproject.toml.

The generated code is never committed. protoc (from grpcio-tools, a build requirement)
emits absolute imports (``from ampgate.events.v1 import change_pb2``); they are rewritten to
the package path so the generated modules import without touching sys.path.
scripts/gen_protos.sh calls ``generate_protos`` too (regenerate after editing a .proto).
"""

from __future__ import annotations

import filecmp
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SCHEMAS = ROOT / "proto-schemas"
GEN_PACKAGE = "services.common.events._gen"
GEN_DIR = Path(*GEN_PACKAGE.split("."))


def _same_tree(a: Path, b: Path) -> bool:
    if not b.is_dir():
        return False
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(
        _same_tree(a / d, b / d) for d in cmp.common_dirs)


def generate_protos(out: Path, schemas: Path = SCHEMAS) -> None:
    """Compile every .proto under ``schemas`` into the package directory ``out``."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(p.relative_to(schemas).as_posix() for p in schemas.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {schemas}: the event contracts are missing")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name) / "_gen"
        tmp.mkdir()
        code = protoc.main(["grpc_tools.protoc", f"-I{schemas}", f"-I{well_known}",
                            f"--python_out={tmp}", f"--pyi_out={tmp}", *protos])
        if code != 0:
            raise RuntimeError(f"protoc failed ({code}) on {', '.join(protos)}")
        for f in [*tmp.rglob("*.py"), *tmp.rglob("*.pyi")]:
            text = re.sub(r"^from ampgate\.", f"from {GEN_PACKAGE}.ampgate.", f.read_text(),
                          flags=re.MULTILINE)
            f.write_text(text)
        # Every directory a package, so setuptools and type checkers see them.
        for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            (d / "__init__.py").touch()
        # Replace only when something changed: other processes may be importing it now.
        if _same_tree(tmp, out):
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        shutil.copytree(tmp, out)
        shutil.rmtree(old, ignore_errors=True)


class build_py_with_protos(build_py):
    """``build_py`` that also compiles the event contracts: into the build tree for a wheel,
    into the source tree for an editable install (which imports from there)."""

    def run(self) -> None:
        super().run()
        root = ROOT if self.editable_mode else Path(self.build_lib)
        generate_protos(root / GEN_DIR)


if __name__ == "__main__":  # the build backend runs this file as __main__
    setup(cmdclass={"build_py": build_py_with_protos})
