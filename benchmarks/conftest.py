"""Benchmark-suite setup: the helpers of this folder import by name, and every JSON result records the
torch build, the device and what picnn_ext compiled, so a table can say what it was measured on."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    import picnn_ext.info

    info = picnn_ext.info.report()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["gpu"] = info["gpu"]
    machine_info["picnn_ext_cpu_compiled"] = info["cpu_compiled"]
    machine_info["picnn_ext_cuda_compiled"] = info["cuda_compiled"]
    machine_info["malloc_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    machine_info["ld_preload"] = os.environ.get("LD_PRELOAD", "")
    machine_info["benchmark_timer"] = str(config.getoption("benchmark_timer", None) or "default")
    machine_info["load_average"] = os.getloadavg()
