"""The package's modules import each other without circles (scripts/import_cycles.py, every import)."""
import os
import runpy
import sys


def test_no_import_cycles(capsys, monkeypatch):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "import_cycles.py")
    monkeypatch.setattr(sys, "argv", [script])
    main = runpy.run_path(script)["main"]
    status = main()
    out = capsys.readouterr().out
    assert status == 0, out
    assert "0 cycle(s)" in out and "cycle:" not in out
    modules = int(out.split()[0])
    assert modules > 50  # the walk found the package
