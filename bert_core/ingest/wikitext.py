"""MediaWiki markup -> plain text (mwparserfromhell), for the XML dump reader in `bert_core.ingest.sources`."""

from __future__ import annotations

import re

_WIKI_DROP_LINKS = re.compile(r"^\s*:?\s*(file|image|category|media):", re.I)


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of a MediaWiki article: templates, refs, tables, files, categories and headings removed, links
    replaced by their text, one paragraph per block."""
    import mwparserfromhell  # lazy: kept out of every ingest worker's start-up; only XML dumps need it

    code = mwparserfromhell.parse(wikitext)
    for node in list(code.ifilter_tags(recursive=True)):
        if str(node.tag).lower() in {"table", "ref", "gallery", "math", "timeline", "references"}:
            _remove(code, node)
    for node in list(code.ifilter_wikilinks(recursive=True)):
        if _WIKI_DROP_LINKS.match(str(node.title)):
            _remove(code, node)
    for node in list(code.ifilter_headings(recursive=True)):
        _remove(code, node)
    text = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
    lines = [line.strip() for line in text.split("\n")]
    # List bullets and indentation markers survive strip_code as leading characters.
    lines = [re.sub(r"^[*#:;]+\s*", "", line) for line in lines]
    return "\n\n".join(line for line in lines if line)


def _remove(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:
        pass  # already gone with a parent that was removed first
