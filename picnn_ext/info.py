"""What was built and what serves each device: `python -m picnn_ext.info [--json]`."""
from __future__ import annotations

import argparse
import json
import platform

import torch

from . import _ext, ops


def _parse_build_info(text: str) -> dict:
    return dict(item.split("=", 1) for item in text.split(";") if "=" in item)


def report() -> dict:
    config = _ext._build_config()
    info = {
        "picnn_ext": __import__("picnn_ext").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "backend_setting": _ext.BACKEND,
        "built_for_torch": getattr(config, "torch_version", None),
        "cpu_compiled": _ext.CPU_LIBRARY.loaded,
        "cpu_missing_reason": _ext.CPU_LIBRARY.reason,
        "cuda_compiled": _ext.CUDA_LIBRARY.loaded,
        "cuda_arch_list": getattr(config, "cuda_arch_list", None) if _ext.CUDA_LIBRARY.loaded else None,
        "cuda_missing_reason": _ext.CUDA_LIBRARY.reason,
    }
    if _ext.CPU_LIBRARY.loaded:
        info["cpu_build"] = _parse_build_info(torch.ops.picnn.build_info())
    if _ext.CUDA_LIBRARY.loaded:
        info["cuda_build"] = _parse_build_info(torch.ops.picnn.cuda_build_info())
    for device in ("cpu", "cuda"):
        try:
            info[f"{device}_backend"] = ops.backend_for(device, warn=False)  # the report says why
        except (RuntimeError, ValueError) as error:
            info[f"{device}_backend"] = f"error: {error}"
    return info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m picnn_ext.info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    info = report()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value if value is not None else '-'}")


if __name__ == "__main__":
    main()
