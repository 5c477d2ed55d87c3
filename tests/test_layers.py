"""The layering rules of the README's Architecture section, checked on the source: stages and the
cache layer report through ds4d_cli.report (never the console or rich), and model code does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ds4d_cli"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_stages_and_the_cache_layer_do_not_print() -> None:
    """Stages report through ds4d_cli.report; only the CLI layer knows the console and rich."""
    files = sorted((PKG / "stages").glob("*.py")) + [PKG / "workspace.py"]
    files += [PKG / name for name in ("pipeline.py", "checkpoints.py", "fitted.py", "report.py")]
    for path in files:
        bad = {m for m in _imported_modules(path)
               if m.split(".")[0] == "rich" or m in ("ds4d_cli.console", "ds4d_cli.progress", "ds4d_cli.terminal")}
        assert not bad, f"{path.name} imports {bad}"
        assert "print(" not in path.read_text(), path.name


def test_model_code_reads_no_files_and_raises_no_cli_errors() -> None:
    """model/ receives tensors and a loaded encoder; files, weights and user errors live outside."""
    forbidden = {"ds4d_cli.errors", "ds4d_cli.fsutil", "ds4d_cli.workspace", "ds4d_cli.report", "ds4d_cli.console",
                 "PIL", "imageio", "transformers", "rich"}
    for path in sorted((PKG / "model").glob("*.py")):
        bad = {m for m in _imported_modules(path) if m in forbidden or m.split(".")[0] in forbidden}
        assert not bad, f"model/{path.name} imports {bad}"
        text = path.read_text()
        for call in ("open(", "torch.load(", "torch.save(", "from_pretrained("):
            assert call not in text, f"model/{path.name} calls {call}"
