"""A neutral document model and its two renderings, Markdown and self-contained HTML.

A document is a title and a list of blocks (:class:`Heading`, :class:`Para`, :class:`Bullets`,
:class:`Table`, :class:`Image`, :class:`Code`, :class:`Details`); :func:`render_markdown` and
:func:`render_html` write the same blocks, so both files say the same.  Markdown links images
relative to the folder and caps tables where a block asks (``md_rows``); HTML embeds images as
base64 ``data:image/png`` URIs and shows :class:`Details` collapsed.  Nothing here knows what
the report is about.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Heading", "Para", "Bullets", "Table", "Image", "Code", "Details", "Block",
           "render_markdown", "render_html"]


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""
    md_rows: int | None = None   # report.md shows at most this many rows (None: all) ...
    md_note: str = ""            # ... and this note where it leaves rows out


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Code:
    text: str
    md_note: str | None = None   # report.md shows this note instead of the text when set


@dataclass
class Details:
    """An appendix section: collapsed (<details>) in report.html, a ### section in report.md."""

    title: str
    blocks: list


Block = Heading | Para | Bullets | Table | Image | Code | Details



# --------------------------------------------------------------------------- markdown

def _md_cell(v: Any) -> str:
    s = "—" if v is None else str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def _md_blocks(blocks: list[Block], root: Path, out: list[str]) -> None:
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {i}" for i in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            rows = b.rows
            cut = b.md_rows is not None and len(rows) > b.md_rows
            if cut:
                rows = rows[:b.md_rows]
            if rows or not cut:
                out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
                out.append("|" + "|".join("---" for _ in b.headers) + "|")
                for r in rows:
                    out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
                out.append("")
            if cut and b.md_note:
                out += [b.md_note, ""]
        elif isinstance(b, Image):
            rel = (b.path.relative_to(root).as_posix() if b.path.is_relative_to(root)
                   else b.path.as_posix())
            out += [f"![{b.path.stem}]({rel})", "", f"*{b.caption}*", ""]
        elif isinstance(b, Code):
            out += [b.md_note, ""] if b.md_note else ["```", b.text, "```", ""]
        elif isinstance(b, Details):
            out += [f"### {b.title}", ""]
            _md_blocks(b.blocks, root, out)


def render_markdown(title: str, blocks: list[Block], root: Path) -> str:
    out = [f"# {title}", ""]
    _md_blocks(blocks, root, out)
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1b1b1b;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2} tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0} img{max-width:100%;border:1px solid #ddd}
figcaption{font-style:italic;color:#444} pre{background:#f6f6f6;padding:.6em;overflow:auto;
font-size:.85em} caption{caption-side:top;text-align:left;font-style:italic;color:#444}
details{margin:.5em 0;border:1px solid #ddd;border-radius:4px;padding:.3em .8em}
summary{cursor:pointer;font-weight:600;font-size:1.05em}
"""


def _html_blocks(blocks: list[Block], out: list[str]) -> None:
    e = html.escape
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            t = ["<table>"]
            if b.caption:
                t.append(f"<caption>{e(b.caption)}</caption>")
            t.append("<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b.headers) + "</tr>")
            for r in b.rows:
                t.append("<tr>" + "".join(f"<td>{e('—' if c is None else str(c))}</td>" for c in r)
                         + "</tr>")
            t.append("</table>")
            out.append("".join(t))
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{e(b.caption)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{e(b.caption)}</figcaption></figure>")
        elif isinstance(b, Code):
            out.append(f"<pre>{e(b.text)}</pre>")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{e(b.title)}</summary>")
            _html_blocks(b.blocks, out)
            out.append("</details>")


def render_html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    _html_blocks(blocks, out)
    out.append("</body></html>")
    return "\n".join(out) + "\n"
