"""Build of picnn_ext: the pure-Python package plus the compiled ops.

Switches (environment variables), printed at the start of every build:
  PICNN_EXT_SKIP_EXT=1     install the pure-Python package only (the ops fall back to PyTorch).
  FORCE_CUDA=1             build the CUDA kernels even where no GPU is visible (needs nvcc and a CUDA torch).
  TORCH_CUDA_ARCH_LIST     GPU architectures, e.g. "9.0" or "8.0;9.0+PTX" (default: the visible GPUs,
                           else "8.0;9.0+PTX").
  MAX_JOBS                 parallel compile jobs (ninja), to cap memory use.
  PICNN_EXT_DEBUG=1        compile with -O0 -g.

Build against the torch you run with: `pip install --no-build-isolation .` (an isolated build fetches the
newest torch and the extension then fails to load with an undefined symbol).
"""
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def env_flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def write_build_config(**values):
    """Record what was built, so that picnn_ext can refuse a library built for another torch."""
    lines = ['"""Written by setup.py at build time: what was compiled and why a part was not."""']
    lines += [f"{key} = {value!r}" for key, value in values.items()]
    (ROOT / "picnn_ext" / "_build_config.py").write_text("\n".join(lines) + "\n")


def extensions():
    """The extension modules to build, and the build config to record."""
    if env_flag("PICNN_EXT_SKIP_EXT"):
        print("picnn_ext build: PICNN_EXT_SKIP_EXT=1, installing the pure-Python package only")
        return [], {}, dict(torch_version=None, cpu_compiled=False, cuda_compiled=False, cuda_arch_list=None,
                            cuda_skip_reason="PICNN_EXT_SKIP_EXT=1 at build time",
                            cpu_skip_reason="PICNN_EXT_SKIP_EXT=1 at build time")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as error:
        sys.exit(f"picnn_ext build: torch must be installed first and the build run with "
                 f"--no-build-isolation ({error}). Or set PICNN_EXT_SKIP_EXT=1 for the pure-Python package.")

    debug = env_flag("PICNN_EXT_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags = opt + ["-std=c++20", "-fopenmp", "-fvisibility=hidden"]
    link_flags = ["-fopenmp"]

    force_cuda = env_flag("FORCE_CUDA")
    torch_has_cuda = torch.version.cuda is not None
    cuda_reason = None
    if not torch_has_cuda:
        cuda_reason = f"torch {torch.__version__} is a CPU build"
    elif CUDA_HOME is None:
        cuda_reason = "nvcc not found (set CUDA_HOME)"
    elif not (torch.cuda.is_available() or force_cuda):
        cuda_reason = "no GPU visible at build time and FORCE_CUDA is not set"
    if force_cuda and cuda_reason:
        sys.exit(f"picnn_ext build: FORCE_CUDA=1 but the CUDA part cannot be built: {cuda_reason}")
    build_cuda = cuda_reason is None
    if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs") if build_cuda else None

    print(f"picnn_ext build: torch {torch.__version__}, CUDA part: "
          f"{'yes, arch ' + str(arch_list) if build_cuda else 'no (' + cuda_reason + ')'}, "
          f"FORCE_CUDA={int(force_cuda)}, MAX_JOBS={os.environ.get('MAX_JOBS', 'default')}, debug={int(debug)}")

    sources = lambda pattern: sorted(str(p.relative_to(ROOT)) for p in CSRC.glob(pattern))  # noqa: E731
    modules = [CppExtension("picnn_ext._C", ["csrc/picnn.cpp"] + sources("autograd/*.cpp") + sources("cpu/*.cpp"),
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)]
    if build_cuda:
        nvcc_flags = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        modules.append(CUDAExtension("picnn_ext._C_cuda", sources("cuda/*.cu") + sources("cuda/*.cpp"),
                                     extra_compile_args={"cxx": opt + ["-std=c++20", "-fvisibility=hidden"],
                                                         "nvcc": nvcc_flags}))
    config = dict(torch_version=torch.__version__, cpu_compiled=True, cuda_compiled=build_cuda,
                  cuda_arch_list=arch_list, cuda_skip_reason=cuda_reason, cpu_skip_reason=None)
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}, config


def install_requires(torch_version):
    """The core dependencies. A build with compiled ops requires the torch it was compiled against (the release,
    any local label such as +cpu or +cu130), as per-torch CUDA-extension wheels do: a library built for another
    torch does not load. A source distribution, or a pure-Python build, takes any torch >= 2.4."""
    building_sdist = "sdist" in sys.argv[1:] or "egg_info" in sys.argv[1:]
    torch_spec = "torch>=2.4"
    if torch_version and not building_sdist:
        torch_spec = "torch==" + torch_version.split("+")[0]
    return [torch_spec, "numpy", "scikit-learn", "tqdm"]


ext_modules, cmdclass, build_config = extensions()
write_build_config(**build_config)

setup(
    packages=find_packages(include=["picnn_ext", "picnn_ext.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=install_requires(build_config["torch_version"]),
)
