"""MkDocs hooks: the pages show the project's own results rather than copies of them.

- `<!-- config-reference -->` becomes the configuration reference generated from the config
  dataclasses (decoder/reference.py), so it cannot fall behind the code.
- `<!-- include PATH -->` becomes the Markdown file at PATH (relative to the repository root, e.g. a
  table under results/), its first heading dropped and its images pointed at their copies.
- Every PNG under results/ and research/ is added to the site at its repository path, so a page
  can show a committed plot as ![...](results/....png).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"<!-- include (\S+) -->")
IMAGE = re.compile(r"!\[([^\]]*)\]\((?!https?:)([^)]+\.png)\)")


def on_files(files, config):
    for top in ("results", "research"):
        for path in sorted((ROOT / top).rglob("*.png")):
            files.append(File(str(path.relative_to(ROOT)), src_dir=str(ROOT), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files


def _included(match: re.Match, page) -> str:
    path = ROOT / match.group(1)
    if not path.is_file():
        raise FileNotFoundError(f"{page.file.src_uri}: <!-- include {match.group(1)} --> names no file")
    text = re.sub(r"\A# .*\n+", "", path.read_text())
    folder = path.parent.relative_to(ROOT)
    depth = "../" * page.file.src_uri.count("/")
    return IMAGE.sub(lambda m: f"![{m.group(1)}]({depth}{folder / m.group(2)})", text)


def on_page_markdown(markdown, page, config, files):
    if "<!-- config-reference -->" in markdown:
        from decoder.reference import reference_markdown

        markdown = markdown.replace("<!-- config-reference -->", reference_markdown())
    return INCLUDE.sub(lambda m: _included(m, page), markdown)
