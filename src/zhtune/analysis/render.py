"""Rendering the report's blocks as HTML (self-contained: charts embedded as base64 PNG, inline CSS, no
external URL) and Markdown (charts referenced as the PNG files next to it), and checking the HTML in
headless Chromium (it renders, no image is broken)."""
from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zhtune.analysis.tables import Table
from zhtune.errors import UserError


@dataclass
class Chart:
    name: str  # file stem in the report folder
    caption: str


# ----------------------------------------------------------------------------------- rendering
_CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","PingFang SC","Microsoft YaHei",system-ui,sans-serif;
max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
h1{font-size:1.8em;margin-bottom:.3em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.lead{background:#f5f8fc;border-left:4px solid #4c72b0;padding:.8em 1.2em;font-size:1.08em}
.lead p{margin:.4em 0}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}caption{caption-side:bottom;text-align:left;color:#666;font-size:.85em}
figure{margin:1.2em 0}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}footer{color:#888;font-size:.8em;margin-top:3em}
"""


_NUMERIC = re.compile(r"^[<+−-]?\s?[\d.,]+")


def _td(cell: str) -> str:
    """A table cell; numbers are right-aligned, text left-aligned."""
    cls = ' class="num"' if _NUMERIC.match(str(cell)) else ""
    return f"<td{cls}>{html.escape(str(cell))}</td>"


def render_html(blocks: list, out: Path, title: str, footer: str) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    for block in blocks:
        if isinstance(block, Table):
            parts.append("<table>" + (f"<caption>{e(block.caption)}</caption>" if block.caption else "")
                         + "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in block.headers) + "</tr></thead><tbody>"
                         + "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in block.rows)
                         + "</tbody></table>")
        elif isinstance(block, Chart):
            data = base64.b64encode((out / f"{block.name}.png").read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(block.caption)}">'
                         f"<figcaption>{e(block.caption)}</figcaption></figure>")
        else:
            kind, content = block
            if kind == "lead":
                parts.append('<div class="lead">' + "".join(f"<p>{e(s)}</p>" for s in content) + "</div>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{e(s)}</li>" for s in content) + "</ul>")
            elif kind == "pre":
                parts.append(f"<pre>{e(content)}</pre>")
            else:
                parts.append(f"<{kind}>{e(content)}</{kind}>")
    parts.append(f"<footer>{e(footer)}</footer></body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list, footer: str) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Table):
            lines += ["| " + " | ".join(map(_md_cell, block.headers)) + " |",
                      "|" + "|".join("---" if i == 0 else "---:" for i in range(len(block.headers))) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            if block.caption:
                lines += ["", f"*{block.caption}*"]
        elif isinstance(block, Chart):
            lines += [f"![{block.caption}]({block.name}.png)", "", f"*{block.caption}*"]
        else:
            kind, content = block
            if kind == "lead":
                lines.append(" ".join(f"**{s}**" if i == 0 else s for i, s in enumerate(content)))
            elif kind == "ul":
                lines += [f"- {s}" for s in content]
            elif kind == "pre":
                lines += ["```", content, "```"]
            else:
                lines.append({"h1": "# ", "h2": "## ", "h3": "### "}.get(kind, "") + content)
        lines.append("")
    lines.append(f"*{footer}*")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- browser check
@dataclass
class BrowserCheck:
    images: int
    broken: int
    screenshot: Path | None


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise UserError("no Chromium found; install it with scripts/install_system_deps.sh "
                    "(Debian: apt-get install chromium)")


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="zhtune-chromium-") as profile:
        cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


_CHECK_SCRIPT = """<script>window.addEventListener('load',function(){var n=0,b=0;
for(var i=0;i<document.images.length;i++){n++;var im=document.images[i];if(!im.complete||im.naturalWidth===0)b++;}
document.body.setAttribute('data-zhtune-images',n);document.body.setAttribute('data-zhtune-broken',b);});</script>"""


def check_in_browser(html_path: str | Path, screenshot: str | Path | None = None, *, width: int = 1280,
                     height: int = 2000, timeout: float = 120) -> BrowserCheck:
    """Open the report in headless Chromium: count its images and the broken ones (naturalWidth 0),
    and optionally save a screenshot. A copy with a tiny counting script is what gets loaded for the
    count, so the report itself stays script-free."""
    html_path = Path(html_path).resolve()
    text = html_path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="zhtune-check-") as tmp:
        probe = Path(tmp) / html_path.name
        probe.write_text(text.replace("</body>", _CHECK_SCRIPT + "</body>", 1), encoding="utf-8")
        res = _chromium(["--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000", "--dump-dom",
                         probe.as_uri()], timeout)
    m = re.search(r'data-zhtune-images="(\d+)"[^>]*data-zhtune-broken="(\d+)"', res.stdout)
    if not m:
        raise RuntimeError(f"chromium did not render {html_path} (exit {res.returncode}): {res.stderr[-2000:]}")
    shot = None
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        res = _chromium([f"--screenshot={shot}", f"--window-size={width},{height}", html_path.as_uri()], timeout)
        if not shot.is_file():
            raise RuntimeError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-2000:]}")
    return BrowserCheck(images=int(m.group(1)), broken=int(m.group(2)), screenshot=shot)
