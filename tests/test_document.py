"""precision_lab.report.document: one document, rendered as Markdown and as HTML."""

from __future__ import annotations

from pathlib import Path

from precision_lab.report.document import (
    Bullets,
    Code,
    Details,
    Heading,
    Para,
    Table,
    render_html,
    render_markdown,
)


def test_markdown_and_html_say_the_same() -> None:
    blocks = [Heading("Answer"), Para("a < b"), Bullets(["one", "two"]),
              Table(["k", "v"], [[i, f"x|{i}"] for i in range(5)], "cap", md_rows=2,
                    md_note="First 2 of 5 rows."),
              Details("A. More", [Code("raw", md_note="(in the JSON)")])]
    md = render_markdown("T", blocks, Path("."))
    assert md.startswith("# T\n\n## Answer\n\na < b\n\n- one\n- two\n")
    assert "| 1 | x\\|1 |" in md and "| 2 |" not in md and "First 2 of 5 rows." in md
    assert "### A. More\n\n(in the JSON)" in md and "raw" not in md
    ht = render_html("T", blocks)
    assert "<p>a &lt; b</p>" in ht and ht.count("<tr>") == 6
    assert "<details><summary>A. More</summary>" in ht and "<pre>raw</pre>" in ht
