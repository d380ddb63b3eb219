import bz2
import gzip
import json
import lzma

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bert_core.ingest.sources import ReadConfig, input_units, read_documents
from bert_core.ingest.wikitext import wikitext_to_text

PARAGRAPH = "The river runs through the old town. Boats carry goods to the market every morning. "


def write_corpus(root):
    root.mkdir()
    (root / "a.jsonl").write_text(
        json.dumps({"text": PARAGRAPH * 3, "id": 1}) + "\n{not json\n" + json.dumps({"body": "no text field"}) + "\n"
    )
    pq.write_table(pa.table({"text": [PARAGRAPH * 4, None]}), root / "b.parquet")
    with gzip.open(root / "c.txt.gz", "wt") as f:
        f.write(PARAGRAPH * 5)
    with bz2.open(root / "d.txt.bz2", "wt") as f:
        f.write("Kites fly high over the hills. Children chase them all day long. " * 4)
    with lzma.open(root / "e.txt.xz", "wt") as f:
        f.write("Snow fell on the quiet village. Nobody went outside that night. " * 4)
    with zstandard.open(root / "f.jsonl.zst", "wt") as f:
        f.write(json.dumps({"text": "Rain came late in the season. The wells were dry by then. " * 4}) + "\n")
    (root / "bad.txt").write_bytes(bytes(range(256)) * 4)  # binary: control bytes, not text in any encoding
    (root / "empty.txt").write_text("")
    (root / "wiki.txt").write_text(
        '<doc id="7" url="u" title="Title">\nTitle\n\n' + PARAGRAPH * 3 + "\n</doc>\n"
        '<doc id="8" url="u" title="Other">\nOther\n\nTiny.\n</doc>\n'
    )
    return root


def test_read_documents_handles_every_format(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    docs = list(read_documents(str(root)))
    by_id = {d.id: d for d in docs}
    assert len(docs) == 13
    assert by_id["a.jsonl:0"].text.startswith("The river")
    assert by_id["a.jsonl:1"].error == "bad_json_record" and by_id["a.jsonl:1"].detail.endswith(
        "a.jsonl:2: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")  # file and line
    assert by_id["a.jsonl:2"].error == "missing_text_field" and "a.jsonl:3: no field 'text'" in by_id["a.jsonl:2"].detail
    assert by_id["b.parquet:1"].error == "text_not_a_string"
    assert by_id["c.txt.gz"].text.startswith("The river")
    assert by_id["d.txt.bz2"].text.startswith("Kites")
    assert by_id["e.txt.xz"].text.startswith("Snow")
    assert by_id["f.jsonl.zst:0"].text.startswith("Rain")
    assert by_id["bad.txt:0"].error == "binary_file"
    assert by_id["empty.txt"].text == ""
    assert by_id["wiki:7"].text.startswith("The river")  # title line dropped
    assert by_id["wiki:8"].text == "Tiny."


def test_blank_line_documents_and_globs(tmp_path):
    (tmp_path / "x.txt").write_text("First document here.\n\nSecond one.\n\n\nThird.")
    (tmp_path / "y.md").write_text("not matched")
    docs = list(read_documents(str(tmp_path / "*.txt"), ReadConfig(text_document_boundary="blank_line")))
    assert [d.text for d in docs] == ["First document here.", "Second one.", "Third."]


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        input_units([str(tmp_path / "nope")])


def test_hf_dataset_from_a_local_directory(tmp_path):
    data = tmp_path / "my_dataset"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": f"Document number {i}. " * 3}) + "\n" for i in range(4)))
    docs = list(read_documents(f"hf:{data}::train"))
    assert len(docs) == 4 and docs[2].text.startswith("Document number 2.")


WIKITEXT = """{{Infobox city|name=Springfield|population=30,000}}
'''Springfield''' is a [[city]] in [[Oregon|the state of Oregon]].<ref>{{cite web|url=x}}</ref> It lies on the
[[Willamette River]].

== History ==
The town was founded in 1848.<ref name="a">Source text.</ref> [[File:Map.png|thumb|A map of the town]]

{| class="wikitable"
! Year !! People
|-
| 1900 || 3,000
|}
* It has a [http://example.org university].
[[Category:Cities in Oregon]]
"""


def test_wikitext_to_text_removes_markup():
    text = wikitext_to_text(WIKITEXT)
    assert "Springfield is a city in the state of Oregon. It lies on the" in text
    assert "Willamette River." in text and "The town was founded in 1848." in text
    assert "It has a university." in text
    for junk in ("Infobox", "cite", "Source text", "thumb", "A map", "wikitable", "1900", "Category", "History",
                 "{{", "[[", "<ref"):
        assert junk not in text, junk


REDIRECT = '<redirect title="X" />'


def _dump(pages):
    body = "".join(
        f"<page><title>{title}</title><ns>{ns}</ns><id>{i}</id>{REDIRECT if redirect else ''}"
        f"<revision><id>{100 + i}</id><text xml:space=\"preserve\">{text}</text></revision></page>"
        for i, (title, ns, redirect, text) in enumerate(pages, start=1)
    )
    return ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">'
            f"<siteinfo><sitename>Wikipedia</sitename></siteinfo>{body}</mediawiki>")


def test_wikipedia_xml_dump(tmp_path):
    from xml.sax.saxutils import escape

    xml = _dump([
        ("Springfield", 0, False, escape(WIKITEXT)),
        ("Talk:Springfield", 1, False, "talk page"),
        ("Springfeld", 0, True, "#REDIRECT [[Springfield]]"),
        ("Shelbyville", 0, False, escape("'''Shelbyville''' is a [[town]]. It is near [[Springfield]].")),
    ])
    with bz2.open(tmp_path / "enwiki-pages-articles.xml.bz2", "wt", encoding="utf-8") as f:
        f.write(xml)
    docs = list(read_documents(str(tmp_path / "enwiki-pages-articles.xml.bz2")))
    assert [(d.id, d.skip) for d in docs] == [("wiki:1", None), ("wiki:2", "wiki_non_article"),
                                              ("wiki:3", "wiki_redirect"), ("wiki:4", None)]
    assert docs[0].text.startswith("Springfield is a city")
    assert docs[3].text == "Shelbyville is a town. It is near Springfield."


def test_truncated_dump_is_an_error_document_not_a_crash(tmp_path):
    (tmp_path / "broken.xml").write_text(_dump([("A", 0, False, "Some text here."),
                                                ("B", 0, False, "More text there.")])[:-40])
    docs = list(read_documents(str(tmp_path / "broken.xml")))
    assert docs[0].text == "Some text here."  # the complete page before the break is kept
    assert docs[-1].error == "malformed_xml" and "broken.xml" in docs[-1].detail
