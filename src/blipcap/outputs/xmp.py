"""XMP sidecars (``photo.jpg.xmp`` or ``photo.xmp``, as sinks.XmpSink names them) holding a caption,
merged into whatever the sidecar already holds.

The caption goes in ``dc:description`` (what Lightroom, darktable, digiKam and exiftool show as
the description/caption) and ``Iptc4xmpCore:AltTextAccessibility`` (IPTC 2021 alt text), each a
language alternative with an ``x-default`` entry. Every other property, namespace and language
entry of an existing sidecar is kept; a sidecar that is not well-formed XML is left untouched and
the image is reported. The image file itself is never opened for writing.
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
from pathlib import Path

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    "xml": "http://www.w3.org/XML/1998/namespace",
}
PROPERTIES = (("dc", "description"), ("Iptc4xmpCore", "AltTextAccessibility"))
_PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_PACKET_END = '\n<?xpacket end="w"?>\n'


class XmpError(ValueError):
    """An existing sidecar that cannot be merged into (not XML, or no rdf:RDF)."""


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def read_description(path: str | os.PathLike) -> str | None:
    """The ``x-default`` dc:description of an XMP file, or None (no file, no description)."""
    try:
        root = _parse(Path(path).read_bytes(), path)[0]
    except (OSError, XmpError):
        return None
    for desc in root.iter(_q("rdf", "Description")):
        for prop in desc.findall(_q("dc", "description")):
            text = _default_entry(prop)
            if text is not None and text.text:
                return text.text
    return None


def merge_caption(existing: bytes | None, caption: str, source: str = "sidecar") -> bytes:
    """The XMP packet ``existing`` (or a new one) with ``caption`` as description and alt text."""
    if existing is None or not existing.strip():
        root, prefixes = _new_packet(), {}
    else:
        root, prefixes = _parse(existing, source)
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(_q("rdf", "RDF"))
    if rdf is None:
        raise XmpError(f"{source}: no rdf:RDF element; left untouched")
    descriptions = rdf.findall(_q("rdf", "Description"))
    if not descriptions:
        descriptions = [ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})]
    for prefix, name in PROPERTIES:
        found = [(d, p) for d in descriptions for p in d.findall(_q(prefix, name))]
        if found:
            for _, prop in found:
                _set_default(prop, caption)
        else:
            _set_default(ET.SubElement(descriptions[0], _q(prefix, name)), caption)
    for prefix, uri in {**prefixes, **NS}.items():
        if not prefix or prefix == "xml":
            continue
        try:
            ET.register_namespace(prefix, uri)  # keep the file's own prefixes, not ns0, ns1, ...
        except ValueError:  # "ns<N>": reserved for the prefixes ElementTree makes up
            pass
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    return (_PACKET_BEGIN + body + _PACKET_END).encode("utf-8")


def _parse(data: bytes, source) -> tuple[ET.Element, dict[str, str]]:
    prefixes: dict[str, str] = {}
    try:
        events = ET.iterparse(io.BytesIO(data), events=("start-ns",))
        for _, (prefix, uri) in events:
            prefixes.setdefault(prefix, uri)
        root = events.root  # type: ignore[attr-defined]
    except ET.ParseError as e:
        raise XmpError(f"{source}: existing XMP is not well-formed XML ({e}); left untouched") from e
    return root, prefixes


def _new_packet() -> ET.Element:
    root = ET.Element(_q("x", "xmpmeta"), {_q("x", "xmptk"): "blipcap"})
    rdf = ET.SubElement(root, _q("rdf", "RDF"))
    ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})
    return root


def _default_entry(prop: ET.Element) -> ET.Element | None:
    alt = prop.find(_q("rdf", "Alt"))
    if alt is None:
        return None
    items = alt.findall(_q("rdf", "li"))
    for li in items:
        if li.get(_q("xml", "lang")) == "x-default":
            return li
    if len(items) == 1 and items[0].get(_q("xml", "lang")) is None:
        return items[0]
    return None


def _set_default(prop: ET.Element, caption: str) -> None:
    """Set the x-default entry of a language alternative, keeping the other languages."""
    alt = prop.find(_q("rdf", "Alt"))
    if alt is None:  # a bare literal or another container: replace it by a proper rdf:Alt
        for child in list(prop):
            prop.remove(child)
        prop.text = None
        alt = ET.SubElement(prop, _q("rdf", "Alt"))
    li = _default_entry(prop)
    if li is None:
        li = ET.Element(_q("rdf", "li"))
        alt.insert(0, li)
    li.set(_q("xml", "lang"), "x-default")
    li.text = caption
