"""Checks on what inspection writes: PNG and SVG validity, and the page in headless chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Appended to a copy of the page: after load, record how many images decoded and the size
# of the drawn graph in a body attribute that --dump-dom shows.
_PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((image) => !(image.complete && image.naturalWidth > 0)).length;
  const box = document.querySelector(".graph svg").getBBox();
  document.body.setAttribute("data-probe", `images=${images.length} broken=${broken} svg=${Math.round(box.width)}x${Math.round(box.height)}`);
});</script>"""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails the test if ``data`` is not a PNG."""
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def parse_svg(text: str) -> ElementTree.Element:
    root = ElementTree.fromstring(text.encode("utf-8"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def needs_dot() -> None:
    """Skip the calling test when Graphviz is not installed (package or `dot` program)."""
    pytest.importorskip(
        "graphviz", reason="the graphviz package is not installed (pip install graphviz)"
    )
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's `dot` is not installed (apt-get install graphviz)")


def chromium() -> str:
    """Path of Debian's chromium; skips the calling test when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@dataclass(frozen=True)
class BrowserLoad:
    dom: str  # the DOM after the load event
    console: list[str]  # console messages (errors, uncaught exceptions, logs)
    probe: str  # "images=N broken=N svg=WxH" from _PROBE, or "" when the probe did not run


def load_in_browser(page: Path, probe: bool = True) -> BrowserLoad:
    """Load ``page`` in headless chromium and return its DOM and console messages."""
    browser = chromium()
    if probe:
        copy = page.with_name("probe-" + page.name)
        copy.write_text(
            page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
            encoding="utf-8",
        )
        page = copy
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    return BrowserLoad(result.stdout, console, found.group(1) if found else "")
