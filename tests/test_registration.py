"""Dispatcher registration: schemas, opcheck, torch.compile, backend choice, the info report, and the
fallback when the compiled extension is missing or broken."""
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import picnn_ext
from picnn_ext import _ext, _registration, ops

needs_native_cpu = pytest.mark.skipif(not _ext.native_available("cpu"), reason=_ext.missing_reason("cpu"))


def run_python(code, cwd=None, **env):
    """Run `code` in a fresh interpreter with extra environment variables; returns the completed process."""
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300,
                          cwd=cwd)


@needs_native_cpu
@pytest.mark.parametrize("name", sorted(_registration.SCHEMAS))
def test_python_schemas_equal_the_compiled_ones(name):
    compiled = str(getattr(torch.ops.picnn, name).default._schema)
    python = str(getattr(torch.ops.picnn_py, name).default._schema)
    assert compiled == "picnn::" + _registration.SCHEMAS[name]
    assert python == "picnn_py::" + _registration.SCHEMAS[name]


def opcheck_cases(device):
    x = torch.randn(3, 5, 4, 4, device=device, requires_grad=True)
    p = torch.rand(3, 5, device=device, requires_grad=True)
    noise = torch.rand(3, 5, device=device)
    tokens = torch.randn(2, 7, 5, device=device, requires_grad=True)
    logits = torch.randn(4, 6, device=device, requires_grad=True)
    return [
        ("bernoulli_gate", (x, p, True, noise, None, 1)),
        ("bernoulli_gate", (x, p, False, None, None, 1)),
        ("bernoulli_gate", (x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(), p, True, noise,
                            None, 1)),
        ("bernoulli_gate", (tokens, p[:2], True, noise[:2], None, -1)),
        ("bernoulli_gate_backward", (torch.randn(3, 5, 4, 4, device=device), x.detach(), (noise < 0.5).float(), 1)),
        ("sample_class", (logits, torch.rand(4, device=device), None)),
        ("sample_class_backward", (torch.randn(4, 6, device=device), logits.detach())),
        ("philox_uniform", (torch.empty(3, 5, device=device), 9, 4)),
        # NND's inference ops (no gradient): the controller, its gates, and the activation with its means
        ("controller_logits", controller_args(device)),
        ("controller_gates", controller_args(device)),
        ("relu_mean_", (torch.randn(3, 5, 4, 4, device=device), torch.randn(3, 5, 4, 4, device=device))),
        ("relu_mean_", (torch.randn(3, 5, 4, 4, device=device).contiguous(memory_format=torch.channels_last), None)),
    ]


def controller_args(device):
    generator = torch.Generator().manual_seed(0)
    x, w1, b1, w2, b2 = (torch.randn(shape, generator=generator) for shape in ((3, 5, 4, 4), (2, 5), (2,), (6, 2),
                                                                                (6,)))
    return tuple(t.to(device) for t in (x, w1, b1, w2, b2))


@pytest.mark.parametrize("index", range(12))
def test_opcheck(backend, index):
    name, args = opcheck_cases(backend.device)[index]
    torch.library.opcheck(getattr(backend.ops, name).default, args)


def gate_and_sample(features, weight, noise_class, noise_gate):
    """A small PICNN-like step using both ops."""
    logits = features.mean((2, 3)) @ weight
    onehot, _ = ops.sample_class(logits, noise=noise_class)
    p = torch.sigmoid(onehot @ weight.t())
    y, mask = ops.bernoulli_gate(features, p, noise=noise_gate)
    return (y.sum((2, 3)) @ weight).logsumexp(-1).sum(), mask


@pytest.mark.parametrize("backend_name", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_equals_eager(backend_name):
    torch.manual_seed(0)
    features = torch.randn(4, 6, 5, 5, requires_grad=True)
    weight = torch.randn(6, 3, requires_grad=True)
    noise_class, noise_gate = torch.rand(4), torch.rand(4, 6)
    compiled = torch.compile(gate_and_sample, fullgraph=True, backend=backend_name)
    results = []
    for fn in (gate_and_sample, compiled):
        loss, mask = fn(features, weight, noise_class, noise_gate)
        grads = torch.autograd.grad(loss, (features, weight))
        results.append((loss, mask, *grads))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager)


def test_torch_compile_draws_like_eager_under_the_same_seed():
    def gate(x, p):
        return ops.bernoulli_gate(x, p)[1]

    x, p = torch.randn(8, 16, 3), torch.rand(8, 16)
    compiled = torch.compile(gate, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    eager = gate(x, p)
    torch.manual_seed(3)
    assert torch.equal(compiled(x, p), eager)


@pytest.mark.parametrize("setting,expected", [("python", "python"), ("auto", None)])
def test_backend_setting_is_honoured(setting, expected):
    result = run_python("from picnn_ext import ops; print(ops.backend_for('cpu'))", PICNN_EXT_BACKEND=setting)
    assert result.returncode == 0, result.stderr
    wanted = expected or ("native" if _ext.native_available("cpu") else "python")
    assert result.stdout.strip() == wanted


def test_an_unknown_backend_setting_is_a_clear_error():
    result = run_python("import torch, picnn_ext; picnn_ext.bernoulli_gate(torch.ones(1, 1), torch.ones(1, 1))",
                        PICNN_EXT_BACKEND="fast")
    assert result.returncode != 0 and "PICNN_EXT_BACKEND must be one of auto, native, python" in result.stderr


def test_forcing_native_where_it_is_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_ext, "BACKEND", "native")
    monkeypatch.setattr(_ext, "CPU_LIBRARY", _ext.LibraryStatus(False, "simulated: not built"))
    with pytest.raises(RuntimeError, match="PICNN_EXT_BACKEND=native.*cpu.*simulated: not built"):
        ops.bernoulli_gate(torch.ones(2, 2), torch.ones(2, 2))


def test_missing_kernels_fall_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_ext, "BACKEND", "auto")
    monkeypatch.setattr(_ext, "CPU_LIBRARY", _ext.LibraryStatus(False, "simulated: not built"))
    monkeypatch.setattr(ops, "_warned_devices", set())
    x, p, noise = torch.randn(2, 3, 4), torch.rand(2, 3), torch.rand(2, 3)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch fallback for cpu.*simulated: not built"):
        y, mask = ops.bernoulli_gate(x, p, noise=noise)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        ops.bernoulli_gate(x, p, noise=noise)
    torch.testing.assert_close(y, x * (noise < p).float()[:, :, None])


def copy_python_package(destination: Path) -> Path:
    """The picnn_ext sources without any compiled library, in a folder of their own."""
    package = destination / "picnn_ext"
    shutil.copytree(Path(picnn_ext.__file__).parent, package,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "_build_config.py"))
    return package


BROKEN_CASES = {
    "no build record": None,
    "garbage library": "torch_version = {torch!r}\ncpu_compiled = True\ncuda_compiled = False\n"
                       "cuda_arch_list = None\ncuda_skip_reason = 'x'\ncpu_skip_reason = None\n",
    "built for another torch": "torch_version = '0.0.1'\ncpu_compiled = True\ncuda_compiled = False\n"
                               "cuda_arch_list = None\ncuda_skip_reason = 'x'\ncpu_skip_reason = None\n",
}
EXPECTED_REASON = {"no build record": "no build record", "garbage library": "failed to load",
                   "built for another torch": "built for torch 0.0.1"}


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_a_missing_or_broken_extension_never_breaks_import(tmp_path, case):
    package = copy_python_package(tmp_path)
    config = BROKEN_CASES[case]
    if config is not None:
        (package / "_build_config.py").write_text(config.format(torch=torch.__version__))
        (package / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not a shared library")
        (package / "_C.so").write_bytes(b"not a shared library")
    code = ("import warnings, torch, picnn_ext\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    y, mask = picnn_ext.bernoulli_gate(torch.ones(2, 3, 4), torch.ones(2, 3))\n"
            "    picnn_ext.bernoulli_gate(torch.ones(2, 3, 4), torch.ones(2, 3))\n"
            "assert torch.equal(y, torch.ones(2, 3, 4))\n"
            "print(len(caught)); print(caught[0].message)\n")
    result = run_python(code, cwd=tmp_path, PYTHONPATH=str(tmp_path), PICNN_EXT_BACKEND="auto")
    assert result.returncode == 0, result.stderr
    count, message = result.stdout.strip().split("\n", 1)
    assert count == "1" and EXPECTED_REASON[case] in message


def test_info_reports_the_build():
    result = subprocess.run([sys.executable, "-m", "picnn_ext.info", "--json"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["torch"] == torch.__version__
    assert info["cpu_compiled"] == _ext.native_available("cpu")
    assert info["cuda_compiled"] == _ext.CUDA_LIBRARY.loaded
    if not info["cuda_compiled"]:
        assert info["cuda_missing_reason"]
    if info["cpu_compiled"]:
        assert info["cpu_build"]["torch"] == torch.__version__.split("+")[0]
    text = subprocess.run([sys.executable, "-m", "picnn_ext.info"], capture_output=True, text=True, timeout=300)
    assert "cpu_compiled" in text.stdout and text.returncode == 0


def test_the_info_report_does_not_use_up_the_fallback_warning(monkeypatch):
    import picnn_ext.info

    monkeypatch.setattr(_ext, "BACKEND", "auto")
    monkeypatch.setattr(_ext, "CPU_LIBRARY", _ext.LibraryStatus(False, "simulated: not built"))
    monkeypatch.setattr(ops, "_warned_devices", set())
    assert picnn_ext.info.report()["cpu_backend"] == "python"
    with pytest.warns(RuntimeWarning, match="simulated: not built"):
        ops.bernoulli_gate(torch.ones(2, 2), torch.ones(2, 2))
