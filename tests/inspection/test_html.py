"""Inspection.to_html: the graph as SVG, masks as PNG heatmaps, and one self-contained page
that a real browser loads without console errors, showing every layer. Every check runs with
the graph drawn by Graphviz's ``dot`` (where installed) and by the pure-Python layout, forced
by hiding ``dot`` from PATH."""

from __future__ import annotations

import base64
import io
import re

import pytest
import torch

import groupsparse as gs
from groupsparse.inspection.graph import DENSE_COLOR, REWRITTEN_COLOR, anchor, dot_available
from tests.inspection.checks import load_in_browser, needs_dot, parse_svg, png_size

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module", params=["dot", "no dot"])
def written(request, small_cnn, tmp_path_factory):
    """(inspection, directory) after to_html, with Graphviz's dot or with dot hidden."""
    pytest.importorskip("matplotlib", reason="the heatmaps need matplotlib (groupsparse[viz])")
    _, masks, compiled = small_cnn
    inspection = gs.inspect(compiled, masks=masks, title="small-cnn")
    directory = tmp_path_factory.mktemp("inspect")
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "dot":
            needs_dot()
        else:  # a PATH without dot: what a pip-only install has
            patch.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
            assert not dot_available()
        assert inspection.to_html(directory) == directory / "index.html"
    return inspection, directory


def _node_fills(root) -> dict[str, str]:
    """{first line of a drawn node's label: its fill colour}."""
    fills = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") != "node":
            continue
        texts = [text.text for text in group.iter(f"{SVG}text")]
        shape = next(
            (s for s in group.iter() if s.tag in (f"{SVG}path", f"{SVG}polygon", f"{SVG}ellipse")),
            None,
        )
        fills[texts[0]] = shape.get("fill")
    return fills


def test_graph_svg_colours_and_annotates_rewritten_layers(written):
    inspection, directory = written
    root = parse_svg((directory / "graph.svg").read_text(encoding="utf-8"))
    fills = _node_fills(root)
    for layer in inspection.layers:
        expected = REWRITTEN_COLOR if layer.row.decision == "sparse" else DENSE_COLOR
        assert fills[layer.name] == expected
    labels = " ".join(text.text for text in root.iter(f"{SVG}text"))
    assert "4 groups x 16 rows, kept 25%" in labels  # features.7 and features.10
    assert "nothing is pruned" in labels  # the dense first layer says why
    assert fills["input x"] == "none" and fills["output"] == "none"


def _has_red(png: bytes) -> bool:
    """Whether the heatmap has red pixels (the group boundaries; kept is green, pruned grey)."""
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(png))[..., :3]
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return bool(((red > 0.6) & (green < 0.45) & (blue < 0.45)).any())


def test_one_png_heatmap_per_layer_with_group_boundaries(written):
    inspection, directory = written
    files = sorted(path.name for path in (directory / "masks").iterdir())
    assert files == sorted(f"{anchor(layer.name)}.png" for layer in inspection.layers)
    for layer in inspection.layers:
        png = (directory / "masks" / f"{anchor(layer.name)}.png").read_bytes()
        width, height = png_size(png)
        assert width >= 400 and height >= 100
        # red lines between groups: features.3 has 2 groups; features.0 (dense) and
        # classifier.2 (one group of all 10 rows) have no boundary
        assert _has_red(png) == (layer.row.pattern == "group" and layer.row.groups > 1), layer.name


def test_page_is_self_contained_and_has_every_layer(written):
    inspection, directory = written
    page = (directory / "index.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(?!#|data:)', page)  # no external resource
    assert "<svg" in page and "<?xml" not in page
    for layer in inspection.layers:
        section = re.search(
            rf'<section id="{anchor(layer.name)}".*?</section>', page, re.DOTALL
        ).group(0)
        data = re.search(r'src="data:image/png;base64,([^"]+)"', section).group(1)
        png_size(base64.b64decode(data))
        assert f'href="#{anchor(layer.name)}"' in page  # the table links to it
    for step in inspection.graphs:
        assert f"after {step} (" in page


def test_page_loads_in_headless_chromium_with_no_console_error(written):
    inspection, directory = written
    loaded = load_in_browser(directory / "index.html")
    assert loaded.console == []
    assert loaded.probe.startswith(f"images={len(inspection.layers)} broken=0 svg=")
    width, height = map(int, loaded.probe.split("svg=")[1].split("x"))
    assert width > 100 and height > 500  # the graph was drawn
    for layer in inspection.layers:
        assert f'id="{anchor(layer.name)}"' in loaded.dom
        assert f">{layer.name}</a>" in loaded.dom  # its row in the table


def test_browser_check_sees_console_errors(tmp_path):
    """The check above would notice a broken page."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><script>console.error("boom"); missing();</script></body></html>'
    )
    loaded = load_in_browser(page, probe=False)
    assert any('"boom"' in line for line in loaded.console)
    assert any("missing is not defined" in line for line in loaded.console)


def test_large_masks_are_drawn_as_the_kept_share_of_each_pixel():
    from groupsparse.inspection.heatmap import _MAX_PIXELS, _kept_density

    mask = torch.zeros(3001, 25088, dtype=torch.bool)  # VGG-16's first linear is 4096 x 25088
    mask[:, ::2] = True  # every other column kept
    density = _kept_density(mask)
    assert density.shape[0] <= _MAX_PIXELS[0] and density.shape[1] <= _MAX_PIXELS[1]
    assert torch.allclose(
        density, torch.full_like(density, 0.5), atol=1 / 13
    )  # 13 columns per pixel
    small = torch.rand(64, 288) > 0.5
    assert torch.equal(_kept_density(small), small.float())  # small masks are drawn as they are
