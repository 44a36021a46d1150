"""Every Python block of the docs that promise runnable examples runs, in order, in one
namespace per page (a page's later blocks may use what its earlier ones defined)."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["integrations.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: str) -> list[str]:
    return BLOCK.findall((DOCS / page).read_text())


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    found = blocks(page)
    assert found, f"docs/{page} has no python blocks"
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace = {"__name__": f"docs_{page}"}
    for i, code in enumerate(found):
        try:
            exec(compile(code, f"docs/{page}[block {i}]", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"docs/{page}, python block {i} failed:\n{code}") from err
