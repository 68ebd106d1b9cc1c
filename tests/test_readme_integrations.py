"""The README's LangChain/LlamaIndex example runs offline as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(title: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_readme_langchain_llamaindex_example_runs(encoder, capsys) -> None:
    blocks = section_code("LangChain and LlamaIndex")
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - our own README
    lines = capsys.readouterr().out.splitlines()
    assert "Moon" in lines[0] and " tides " in lines[0] and lines[1] == "['keyword']"
    assert lines[2] == "bread" and "waggle" in lines[3]
