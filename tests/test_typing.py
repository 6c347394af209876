"""The type hints: the package passes mypy, a user's code sees them once the package is installed (PEP 561: the
py.typed marker, and the stub of the compiled module, _C.pyi), and that stub names what the module has."""
import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import rcm_fsad_ops
from rcm_fsad_ops import _C

PACKAGE = Path(rcm_fsad_ops.__file__).parent
# Beyond mypy's defaults: no function half annotated, and no `type: ignore` left that is no longer needed.
# torchvision ships no hints (import-untyped); a module that is missing altogether is still an error.
PACKAGE_FLAGS = ["--disallow-incomplete-defs", "--warn-unused-ignores", "--disable-error-code", "import-untyped"]

# A user's script; the comments say what mypy should report on each line (a layer's forward is called by name:
# nn.Module.__call__ returns Any).
USER_SCRIPT = """\
import torch
import rcm_fsad_ops
from rcm_fsad_ops.nn import ModulatedDeformConv2dWithOffsetPredictor

x = torch.zeros(1, 2, 4, 4)
reveal_type(rcm_fsad_ops.deform_conv2d(x, torch.zeros(1, 18, 4, 4), torch.zeros(3, 2, 3, 3), padding=1))  # Tensor
reveal_type(ModulatedDeformConv2dWithOffsetPredictor(2, 3, 3, device="cpu").forward(x))  # Tensor
reveal_type(rcm_fsad_ops.info())  # a dict keyed by str
reveal_type(rcm_fsad_ops._C.cpu_weight_cache())  # the stub's type
rcm_fsad_ops.deform_conv2d(x, x, x, stride="2")  # an error naming stride
"""


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for this file's runs: the second reads torch's analysis from the first."""
    return tmp_path_factory.mktemp("mypy_cache")


def run_mypy(args: typing.List[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_package_passes_mypy(mypy_cache: Path) -> None:
    result = run_mypy([*PACKAGE_FLAGS, "-p", "rcm_fsad_ops"], PACKAGE.parent, mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_users_code_sees_the_hints_of_the_installed_package(tmp_path: Path, mypy_cache: Path) -> None:
    """mypy run in another directory finds the package where the interpreter does (the venv's site-packages:
    `make` puts the checkout there, as an editable install does), and analyses it only with its py.typed
    marker; without it every line below reveals Any and the import is an error."""
    (tmp_path / "user.py").write_text(USER_SCRIPT)
    result = run_mypy(["--python-executable", sys.executable, "user.py"], tmp_path, mypy_cache)
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        'user.py:6: note: Revealed type is "torch._tensor.Tensor"',
        'user.py:7: note: Revealed type is "torch._tensor.Tensor"',
        'user.py:8: note: Revealed type is "dict[str, Any]"',
        'user.py:9: note: Revealed type is "dict[str, int]"',
    ], result.stdout + result.stderr
    assert len(lines) == 5 and lines[4].startswith("user.py:10: error: Argument \"stride\" to \"deform_conv2d\""), (
        result.stdout + result.stderr)


def test_the_stub_of_the_compiled_module_names_what_it_has() -> None:
    stub = ast.parse((PACKAGE / "_C.pyi").read_text())
    functions = {node.name: node for node in stub.body if isinstance(node, ast.FunctionDef)}
    constants = {node.target.id: node.annotation for node in stub.body
                 if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    assert {name for name in dir(_C) if not name.startswith("_")} == set(functions) | set(constants)
    namespace = {name: getattr(typing, name) for name in typing.__all__}
    for name, annotation in constants.items():
        assert isinstance(getattr(_C, name), eval(ast.unparse(annotation), namespace)), name
    for name, node in functions.items():
        assert callable(getattr(_C, name)) and not node.args.args, name
        if name == "wgmma_runs" and _C.built_with_cuda and not torch.cuda.is_available():
            continue  # it asks the current CUDA device
        returns = eval(ast.unparse(node.returns), namespace)
        value = getattr(_C, name)()
        if returns is None:
            assert value is None, name
            continue
        assert isinstance(value, typing.get_origin(returns) or returns), (name, value)
        if typing.get_origin(returns) is dict:
            key_type, value_type = typing.get_args(returns)
            assert all(isinstance(k, key_type) and isinstance(v, value_type) for k, v in value.items()), (name, value)


def test_the_hints_are_installed_with_the_package(tmp_path: Path) -> None:
    """What setup.py lays out for a wheel (build_py: the Python files and the package data) holds the marker and
    the stub."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)], cwd=PACKAGE.parent,
                   check=True, capture_output=True, timeout=300)
    assert (tmp_path / "rcm_fsad_ops" / "py.typed").is_file()
    assert (tmp_path / "rcm_fsad_ops" / "_C.pyi").read_text() == (PACKAGE / "_C.pyi").read_text()
