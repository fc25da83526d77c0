"""Make a matplotlib SVG fit inline in an offline HTML page.

Inline SVG in HTML needs no namespaces, DOCTYPE or RDF metadata, and those are the only
places a matplotlib SVG names other hosts; they are removed, so the page holds no URL.
Element ids are prefixed so that several figures can share one page, and groups given a
``gid`` can get a ``<title>`` (the browser's own tooltip).
"""

from __future__ import annotations

import html
import re

_DROP = [re.compile(p, re.S) for p in (r"<\?xml.*?\?>\s*", r"<!DOCTYPE.*?>\s*", r"<metadata>.*?</metadata>\s*",
                                       r'\s+xmlns(:\w+)?="[^"]*"')]
_ID = re.compile(r'\bid="([^"]+)"')


def inline_svg(svg: str, prefix: str, titles: dict[str, str] | None = None) -> str:
    """``svg`` (as written by matplotlib) cleaned for inlining; ``titles`` maps gid -> tooltip text."""
    for pattern in _DROP:
        svg = pattern.sub("", svg)
    svg = svg.replace("xlink:href=", "href=")
    ids = set(_ID.findall(svg))
    svg = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    def local(template: str):
        return lambda m: template.format(f"{prefix}-{m.group(1)}") if m.group(1) in ids else m.group(0)

    svg = re.sub(r'href="#([^"]+)"', local('href="#{}"'), svg)
    svg = re.sub(r"url\(#([^)]+)\)", local("url(#{})"), svg)
    for gid, text in (titles or {}).items():
        svg = re.sub(f'(<g id="{re.escape(prefix)}-{re.escape(gid)}"[^>]*>)',
                     lambda m, t=text: f"{m.group(1)}<title>{html.escape(t)}</title>", svg, count=1)
    return svg.strip()
