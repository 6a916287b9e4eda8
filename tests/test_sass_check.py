"""benchmarks/sass_check.py can fail: small kernels built with nvcc for sm_90 (tests/sass/bad_kernels.cu),
each breaking one rule, are each reported under that rule, and the kernel that keeps the rules passes.

Needs nvcc and cuobjdump (pip package nvidia-cuda-cuobjdump): without them the test is skipped with the
reason; CI runs it with PICNN_EXT_REQUIRE_SASS_TOOLS=1, which turns that skip into a failure.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sass_check  # noqa: E402

PACKS = {"regs": 64, "stack": 0, "shared": 0, "packs": True, "scalar_in_main_loop": None, "why": "test"}
PLAIN = {**PACKS, "packs": False}
TEST_BUDGETS = {"good_copy_kernel": PACKS, "local_array_kernel": PLAIN, "scalar_loop_kernel": PACKS,
                "div64_loop_kernel": PLAIN, "shared_kernel": PLAIN}


def tools():
    """(nvcc, cuobjdump), or skip (fail under PICNN_EXT_REQUIRE_SASS_TOOLS=1) naming what is missing."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.isfile("/usr/local/cuda/bin/nvcc") else None)
    cuobjdump = sass_check.find_tool("cuobjdump")
    missing = [name for name, path in (("nvcc", nvcc), ("cuobjdump", cuobjdump)) if path is None]
    if missing:
        reason = f"{' and '.join(missing)} not found (CUDA toolkit; pip install nvidia-cuda-cuobjdump)"
        if os.environ.get("PICNN_EXT_REQUIRE_SASS_TOOLS") == "1":
            pytest.fail(f"PICNN_EXT_REQUIRE_SASS_TOOLS=1 but {reason}")
        pytest.skip(reason)
    return nvcc, cuobjdump


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    nvcc, _ = tools()
    cubin = str(tmp_path_factory.mktemp("sass") / "bad_kernels.cubin")
    subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-O3", "-o", cubin, os.path.join(ROOT, "tests", "sass", "bad_kernels.cu")],
                   check=True)
    rows, breaches = sass_check.check(cubin, budgets=TEST_BUDGETS)
    by_kernel = {}
    for kernel, rule, _ in breaches:
        by_kernel.setdefault(sass_check.split_name(kernel)[0], set()).add(rule)
    return {row["kernel"]: row for row in rows}, by_kernel


def test_every_kernel_is_read(report):
    rows, _ = report
    assert set(rows) == set(TEST_BUDGETS)


def test_good_kernel_passes(report):
    rows, breaches = report
    assert "good_copy_kernel" not in breaches
    assert rows["good_copy_kernel"]["ld128"] >= 1 and rows["good_copy_kernel"]["st128"] >= 1


@pytest.mark.parametrize("kernel, rule", [("local_array_kernel", "spill"), ("scalar_loop_kernel", "packs"),
                                          ("div64_loop_kernel", "div64"), ("shared_kernel", "shared")])
def test_each_rule_fires(report, kernel, rule):
    _, breaches = report
    assert breaches.get(kernel) == {rule}, breaches.get(kernel)


def test_register_budget_fires(report, tmp_path):
    nvcc, _ = tools()
    cubin = str(tmp_path / "k.cubin")
    subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-O3", "-o", cubin, os.path.join(ROOT, "tests", "sass", "bad_kernels.cu")],
                   check=True)
    _, breaches = sass_check.check(cubin, budgets={**TEST_BUDGETS, "good_copy_kernel": {**PACKS, "regs": 8}})
    rules = {rule for kernel, rule, _ in breaches if "good_copy_kernel" in kernel}
    assert rules == {"registers"}


def test_cli_exits_nonzero_naming_kernel_and_rule(tmp_path, capsys):
    nvcc, _ = tools()
    cubin = str(tmp_path / "k.cubin")
    subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-O3", "-o", cubin, os.path.join(ROOT, "tests", "sass", "bad_kernels.cu")],
                   check=True)
    assert sass_check.main([cubin]) == 1  # these kernels have no budget entry: the default rules apply
    out = capsys.readouterr().out
    assert "BREACH [spill]" in out and "local_array_kernel" in out and "default" in out


def test_split_name_ignores_namespaces():
    name = ("void picnn::(anonymous namespace)::gate_forward_columns_kernel<c10::BFloat16, 8, false>"
            "(c10::BFloat16 const*, at::cuda::detail::IntDivider<unsigned int>, bool)")
    assert sass_check.split_name(name) == ("gate_forward_columns_kernel", ["c10::BFloat16", "8", "false"])
    assert sass_check.split_name("picnn::kernels::gate_mask_kernel(picnn::FloatArray, long)") == ("gate_mask_kernel", [])
