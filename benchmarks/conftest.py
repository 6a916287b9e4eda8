"""Lets the benchmark files import their shared helpers (gate_cases.py) by name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
