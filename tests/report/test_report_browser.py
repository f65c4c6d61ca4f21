"""The HTML divergence report, rendered by a real browser (Debian's chromium,
headless): the page of the demo traces draws (non-blank screenshot, the
layer plots, histogram and heat map present, the first divergence
highlighted), with no console errors and no network fetches.

`make test` installs chromium (`make browser`); without it this test fails.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise AssertionError("no chromium: `make browser` installs Debian's chromium (make test does)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    exe = TARGET / "debug" / "tracedump"
    assert exe.exists(), f"{exe}: `cargo build -p tracedump-cli` makes it"
    tmp = tmp_path_factory.mktemp("report")
    a, b = tmp / "demo.tdump", tmp / "demo.reference.tdump"
    subprocess.run([str(exe), "demo", str(a)], check=True, capture_output=True)
    out = tmp / "report.html"
    r = subprocess.run([str(exe), "report", str(a), str(b), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr  # the demo's runs diverge
    assert "first divergence ffn_norm-2" in r.stdout
    return out


def render(html: Path, tmp: Path):
    shot = tmp / "shot.png"
    common = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--enable-logging=stderr", "--v=0", "--window-size=1300,2400", "--virtual-time-budget=5000"]
    r1 = subprocess.run(common + [f"--screenshot={shot}", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), r1.stderr[-2000:]
    r2 = subprocess.run(common + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    return shot, r2.stdout, r1.stderr + r2.stderr


def test_report_is_self_contained(page):
    text = page.read_text()
    # nothing is fetched: no external scripts, styles, images or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text


def test_report_renders_in_chromium(page, tmp_path):
    from PIL import Image

    shot, dom, log = render(page, tmp_path)
    console = [l for l in log.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not [l for l in console if re.search(r"error|uncaught", l, re.I)], console
    # the script ran to its end, and no error was caught on the way
    assert re.search(r'<body[^>]*data-rendered="1"', dom), dom[:500]
    assert "data-error" not in dom
    # the four layer plots with their lines, the first layer marked
    assert dom.count('class="chart"') == 4
    assert dom.count('class="series"') == 5 and dom.count('class="first-layer"') == 4
    assert dom.count('class="bar"') == 40  # histogram bins
    assert 'id="heat"' in dom and 'class="first"' in dom and "ffn_norm-2" in dom
    assert dom.count('id="pair-') == 59
    # the blamed op, with its agreeing input and the likely cause
    assert dom.count('class="blamed"') == 1 and 'id="blamed-38"' in dom
    assert '<b>row scale</b>' in dom and "a normalization with the wrong statistics" in dom
    assert 'href="#pair-37">ffn_inp-2</a>' in dom
    # a real picture: many colours, not a blank page
    img = Image.open(shot).convert("RGB")
    assert img.size == (1300, 2400)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    white = {rgb: c for c, rgb in colours}.get((255, 255, 255), 0)
    assert white < 0.95 * img.size[0] * img.size[1]
    # the heat map is drawn: reddish pixels exist
    reds = sum(c for c, (r, g, b) in colours if r > 200 and g < 80 and b < 80)
    assert reds > 1000


def test_python_report(page, tmp_path):
    import tracedump

    a, b = page.parent / "demo.tdump", page.parent / "demo.reference.tdump"
    out = tmp_path / "py.html"
    r = tracedump.report(a, b, out)
    assert not r.agrees and r.first_divergence["key"] == "ffn_norm-2"
    html = out.read_text()
    assert html.startswith("<!doctype html>") and '"key":"ffn_norm-2"' in html
