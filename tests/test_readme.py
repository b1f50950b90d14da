"""The README's promises that CI relies on."""
import re

from conftest import ROOT


def _code_blocks(text):
    return re.findall(r"```\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.strip() for b in _code_blocks(readme)]
    test_cmd = next(b for b in blocks if "pytest" in b and "\n" not in b)
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    assert ci_lines[-1] == test_cmd


def test_quick_start_uses_shipped_model():
    readme = (ROOT / "README.md").read_text()
    quick = next(b for b in _code_blocks(readme) if "pip install" in b)
    for path in re.findall(r"models/\S+", quick):
        assert (ROOT / path).exists(), path


def test_readme_pass_table_lists_registered_passes():
    from tvmlite.passes import available_passes

    readme = (ROOT / "README.md").read_text()
    for name, cls in available_passes().items():
        if not cls.__module__.startswith("tvmlite.passes."):
            continue  # passes the tests register themselves
        assert f"`{name}`" in readme, f"pass {name} is not in the README"
